/**
 * Daemons the dev targets start without systemd (the control plane of `local-dev-start`, and
 * the Linux-native agent where systemd does not run): detached from the terminal, output
 * appended to `<runDir>/<name>.log`, pid in `<runDir>/<name>.pid` (spec 001: "tail -f
 * .local/run/otherix-api.log").
 *
 * @module
 */
import { join } from "node:path";
import { onPath, run, sleep } from "./proc.ts";

/** Log and pid file of daemon `name`. */
export function daemonFiles(runDir: string, name: string): { log: string; pid: string } {
  return { log: join(runDir, `${name}.log`), pid: join(runDir, `${name}.pid`) };
}

/** True when process `pid` exists (`kill -0`, portable to macOS). */
export async function alive(pid: number): Promise<boolean> {
  return (await run(["kill", "-0", String(pid)], { capture: true })).code === 0;
}

/** The pid of daemon `name` when its pid file names a live process; else null. */
export async function daemonPid(runDir: string, name: string): Promise<number | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(daemonFiles(runDir, name).pid);
  } catch {
    return null;
  }
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 && await alive(pid) ? pid : null;
}

/**
 * Starts `argv` detached as daemon `name` (its own session where `setsid` exists, SIGHUP
 * ignored), stdin from /dev/null, output appended to its log.
 *
 * @returns its pid
 */
export async function startDaemon(
  runDir: string,
  name: string,
  argv: string[],
  env: Record<string, string> = {},
): Promise<number> {
  await Deno.mkdir(runDir, { recursive: true });
  const files = daemonFiles(runDir, name);
  await Deno.remove(files.pid).catch(() => {});
  // sh writes its own pid, then becomes the daemon (exec keeps the pid).
  const script = 'echo $$ > "$0.pid.tmp" && mv "$0.pid.tmp" "$0.pid" && ' +
    'exec "$@" >>"$0.log" 2>&1 </dev/null';
  const prefix = onPath("setsid") ? ["setsid"] : [];
  const [cmd, ...args] = [
    ...prefix,
    "nohup",
    "/bin/sh",
    "-c",
    script,
    join(runDir, name),
    ...argv,
  ];
  const child = new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  child.unref();
  for (let i = 0; i < 100; i++) {
    const pid = await daemonPid(runDir, name);
    if (pid) return pid;
    await sleep(50);
  }
  throw new Error(`${name} did not start (see ${files.log})`);
}

/**
 * Stops daemon `name`: SIGTERM, then SIGKILL (its process group too) after `graceMs`.
 *
 * @returns true when it was running
 */
export async function stopDaemon(runDir: string, name: string, graceMs = 20_000): Promise<boolean> {
  const pid = await daemonPid(runDir, name);
  if (pid === null) {
    await Deno.remove(daemonFiles(runDir, name).pid).catch(() => {});
    return false;
  }
  await run(["kill", "-TERM", String(pid)], { capture: true });
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && await alive(pid)) await sleep(100);
  if (await alive(pid)) {
    await run(["kill", "-KILL", "--", `-${pid}`], { capture: true });
    await run(["kill", "-KILL", String(pid)], { capture: true });
    for (let i = 0; i < 50 && await alive(pid); i++) await sleep(100);
  }
  await Deno.remove(daemonFiles(runDir, name).pid).catch(() => {});
  return true;
}
