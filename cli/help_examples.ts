/**
 * The example every command's `--help` ends with (issue 10: "every command's --help ends with
 * an example"), by command path, applied to whatever command groups were loaded
 * ({@link addHelpExamples}). Commands that print their own examples (`doctor`, `completion`)
 * are not listed here; a test walks the full tree and fails for a command without one.
 *
 * @module
 */
import type { Command } from "commander";

/** Example lines (without the leading `otherix `) by space-joined command path. */
export const HELP_EXAMPLES: Record<string, string[]> = {
  "": ["vm list", "doctor"],
  config: ["config list", "config use homelab"],
  "config add": ["config add cluster --name homelab --server https://otx.lan:8443 --login me@x.io"],
  "config add cluster": [
    "config add cluster --name homelab --server https://otx.lan:8443 --login me@x.io",
  ],
  "config list": ["config list"],
  "config use": ["config use homelab"],
  "config show": ["config show", "config show homelab -o yaml"],
  "config remove": ["config remove homelab"],
  login: ["login --server https://otx.lan:8443 --oidc"],
  node: ["node list -o wide", "node get node-a"],
  "node list": ["node list", "node list --status ready -o wide"],
  "node cordon": ["node cordon node-a"],
  "node uncordon": ["node uncordon node-a"],
  "node ping": ["node ping node-a"],
  "node delete": ["node delete node-a"],
  "node get": ["node get node-a", "node get node-a -o json"],
  "node join-token": ["node join-token create --node-name node-b"],
  "node join-token create": ["node join-token create --node-name node-b --ttl 1h"],
  "node join-token list": ["node join-token list"],
  "node join-token revoke": ["node join-token revoke 3f0c…"],
  vm: ["vm list", "vm create web-1 --image-url https://img.example/noble.img --wait"],
  "vm create": [
    "vm create web-1 --image-url https://img.example/noble.img --vcpus 2 --memory-mb 2048 --wait",
  ],
  "vm list": ["vm list", "vm list -o wide", "vm list --watch"],
  "vm get": ["vm get web-1", "vm get web-1 -o yaml"],
  "vm delete": ["vm delete web-1 --force --wait"],
  "vm start": ["vm start web-1 --wait"],
  "vm stop": ["vm stop web-1 --wait"],
  "vm poweroff": ["vm poweroff web-1"],
  "vm reboot": ["vm reboot web-1 --wait"],
  "vm pause": ["vm pause web-1"],
  "vm resume": ["vm resume web-1"],
  "vm reset": ["vm reset web-1"],
  "vm logs": ["vm logs web-1 --tail-bytes 4096"],
  "vm console": ["vm console web-1"],
  "vm ssh": ["vm ssh web-1", "vm ssh web-1 -- uptime"],
  pool: ["pool list", "pool create fast --node node-a --path /srv/otherix/fast --wait"],
  "pool list": ["pool list", "pool list --node node-a -o json"],
  "pool get": ["pool get default"],
  "pool create": ["pool create fast --node node-a --path /srv/otherix/fast --wait"],
  "pool delete": ["pool delete fast --node node-a"],
  "pool scan": ["pool scan default --wait"],
  network: ["network list", "network create lan --type bridge --managed"],
  "network create": ["network create lan --type bridge --managed --subnet 10.20.0.0/24"],
  "network list": ["network list"],
  "network get": ["network get lan"],
  "network delete": ["network delete lan"],
  cluster: ["cluster get-default-pool"],
  "cluster get-default-pool": ["cluster get-default-pool"],
  "cluster set-default-pool": ["cluster set-default-pool fast"],
  "cluster unset-default-pool": ["cluster unset-default-pool"],
  "cluster members": ["cluster members -o wide"],
  "cluster join-token": ["cluster join-token create --ttl 30m"],
  "cluster join-token create": ["cluster join-token create --ttl 30m"],
  "cluster remove-member": ["cluster remove-member cp-3 --force"],
  create: ["create -f cluster.yaml --wait"],
  apply: ["apply -f cluster.yaml --wait"],
  delete: ["delete -f cluster.yaml --force"],
  user: ["user list", "user create ann@example.com --role operator"],
  "user create": ["user create ann@example.com --role operator"],
  "user list": ["user list"],
  "user get": ["user get ann@example.com"],
  "user set-role": ["user set-role ann@example.com viewer"],
  "user reset-password": ["user reset-password ann@example.com"],
  "user delete": ["user delete ann@example.com"],
  token: ["token create --name ci-nightly --expires-in 30d"],
  "token create": ["token create --name ci-nightly --expires-in 30d"],
  "token list": ["token list"],
  "token revoke": ["token revoke 3f0c…"],
  audit: ["audit list --action vm.delete"],
  "audit list": ["audit list --user ann@example.com --limit 20"],
  whoami: ["whoami", "whoami -o json"],
};

/** The `Examples:` block for `lines`. */
export function examplesText(lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  otherix ${l}`).join("\n")}\n`;
}

/** Adds {@link HELP_EXAMPLES} to `program` and every loaded subcommand that has an entry. */
export function addHelpExamples(program: Command): void {
  const walk = (cmd: Command, path: string[]) => {
    const lines = HELP_EXAMPLES[path.join(" ")];
    if (lines) cmd.addHelpText("after", examplesText(lines));
    for (const c of cmd.commands) walk(c, [...path, c.name()]);
  };
  walk(program, []);
}
