/**
 * Running the host networking tools (`ip`, `bridge`, `iptables`, `sysctl`, `dnsmasq`,
 * `pgrep`/`pkill`): every one is named in the agent's run allowlist (scripts/permissions.ts
 * `AGENT_RUN_ALLOWLIST`) and called with fixed argument shapes only. Tests pass a
 * {@link Runner} that prefixes `ip netns exec <ns>`, so the same code drives a network
 * namespace.
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";

/** The outcome of one command. */
export interface RunResult {
  /** Exit status (-1: the binary could not be started). */
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` with `args` (no shell) and reports its outcome; never throws. */
export type Runner = (cmd: string, args: string[]) => Promise<RunResult>;

/** The runner of the agent: `Deno.Command`, stdin closed. */
export const hostRunner: Runner = async (cmd, args) => {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    return { code: -1, stdout: "", stderr: `cannot run ${cmd}: ${(e as Error).message}` };
  }
};

/** A runner that runs every command inside network namespace `ns` (tests). */
export function netnsRunner(ns: string, inner: Runner = hostRunner): Runner {
  return (cmd, args) => inner("ip", ["netns", "exec", ns, cmd, ...args]);
}

/**
 * Runs a command that must succeed.
 *
 * @returns its stdout
 * @throws ApiError `network_setup_failed` with the command line and its stderr
 */
export async function mustRun(run: Runner, cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) {
    const err = (r.stderr || r.stdout).trim().split("\n").slice(-3).join("; ");
    throw new ApiError(
      "network_setup_failed",
      `${cmd} ${args.join(" ")} failed (exit ${r.code})${err ? `: ${err}` : ""}`,
    );
  }
  return r.stdout;
}
