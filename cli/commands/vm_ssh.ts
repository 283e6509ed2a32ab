/**
 * `otherix vm ssh NAME [-l USER] [-i KEY] [-- ARGS…]` (issue 8 "Reachability"): runs the
 * system `ssh` against the VM's address with the terminal attached (stdin, stdout, stderr
 * inherited) and exits with ssh's status. The address is the first one of the VM's first NIC
 * that has any (`vm get` lists them: IPAM, else the guest agent, else the host's neighbour
 * table); a VM without one is `api_error: vm_has_no_address` (a VM on the default user-mode
 * NAT NIC is not reachable from the host). `-l` and `-i` go to ssh as given; ARGS after `--`
 * follow the address, i.e. they are the remote command (`otherix vm ssh demo -- uname -a`).
 *
 * @module
 */
import type { Command } from "commander";
import { VmSchema } from "../../shared/api/vms.ts";
import { connect, seg } from "../common.ts";
import { ApiCallError, UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { firstAddress, vmNics } from "../vm_nics.ts";

/** Runs `ssh` with `args` attached to the terminal; resolves to its exit status. */
export type SshRunner = (args: string[]) => Promise<number>;

/**
 * The real runner: `ssh` from PATH (Deno.Command, stdio inherited).
 *
 * @throws UsageError when ssh is not installed, or this CLI's sandbox may not run it
 */
export const runSsh: SshRunner = async (args) => {
  try {
    const child = new Deno.Command("ssh", {
      args,
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    return (await child.status).code;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError("ssh not found on PATH: install an OpenSSH client");
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      throw new UsageError(`this otherix may not run ssh: ${(e as Error).message}`);
    }
    throw e;
  }
};

/** The ssh argv for `address` with the command's options. */
export function sshArgs(
  address: string,
  opts: { login?: string; identity?: string },
  rest: string[],
): string[] {
  return [
    ...(opts.login !== undefined ? ["-l", opts.login] : []),
    ...(opts.identity !== undefined ? ["-i", opts.identity] : []),
    address,
    ...rest,
  ];
}

/**
 * Adds `ssh` to the `vm` command. The process exits with ssh's status (`exit` is called with
 * it when it is not 0, since the CLI's own errors use 1).
 */
export function addVmSshCommand(
  vm: Command,
  io: Io,
  run: SshRunner = runSsh,
  exit: (code: number) => void = (code) => Deno.exit(code),
): void {
  vm.command("ssh")
    .description("ssh to the VM's address with the system ssh (ARGS after -- are the command)")
    .argument("<name>", "VM name")
    .argument("[args...]", "after --: the remote command and its arguments")
    .option("-l, --login <user>", "remote user (ssh -l)")
    .option("-i, --identity <file>", "private key file (ssh -i)")
    .action(async (name: string, rest: string[], opts, cmd: Command) => {
      const path = `/v1/vms/${seg(name)}`;
      const client = await connect(cmd, io);
      const { data } = await client.json("GET", path, VmSchema);
      const address = firstAddress(data);
      if (address === null) {
        const nics = vmNics(data).length;
        throw new ApiCallError(
          "vm_has_no_address",
          `vm ${name} has no known address` +
            (nics === 0
              ? " (it has no NIC on an Otherix network; the default user-mode NAT NIC is" +
                " not reachable from the host)"
              : " yet (none assigned by IPAM nor learnt from the guest; check 'otherix vm get " +
                `${name}')`),
        );
      }
      if (opts.identity !== undefined && opts.identity === "") {
        throw new UsageError("-i: missing key file");
      }
      const code = await run(sshArgs(address, opts, rest));
      if (code !== 0) exit(code);
    });
}
