/**
 * Shared fixtures of the agent tests: a temporary agent root, a loopback HTTP server serving
 * images, a tiny raw backing image.
 *
 * @module
 */
import { denoRunArgs } from "../../scripts/permissions.ts";
import { createHash } from "node:crypto";
import { type AgentConfig, parseAgentConfig } from "../../agent/config.ts";
import { createLogger, type Logger } from "../../shared/log.ts";

/** A temporary agent root: `<root>/{etc,state,run}`. */
export interface TempRoot {
  root: string;
  cfg: AgentConfig;
  cleanup(): Promise<void>;
}

/** Creates a temp root and a config pointing at it (extra YAML appended). */
export async function tempRoot(extraYaml = ""): Promise<TempRoot> {
  const root = await Deno.makeTempDir({ prefix: "otx-agent-" });
  for (const d of ["etc", "state", "run"]) await Deno.mkdir(`${root}/${d}`);
  const cfg = parseAgentConfig(
    `paths:\n  config_dir: ${root}/etc\n  state_dir: ${root}/state\n  run_dir: ${root}/run\n` +
      `server:\n  listen: "127.0.0.1:0"\n` + extraYaml,
  );
  return { root, cfg, cleanup: () => Deno.remove(root, { recursive: true }) };
}

/** A loopback HTTP server serving `files` by path and counting requests. */
export function serveFiles(files: Map<string, Uint8Array<ArrayBuffer>>) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const data = files.get(path);
    return data ? new Response(data) : new Response("not found", { status: 404 });
  });
  return { server, hits, base: `http://127.0.0.1:${server.addr.port}` };
}

/** Bytes of a raw 1 MiB disk image made by `qemu-img create -f raw`. */
export async function tinyRawImage(): Promise<Uint8Array<ArrayBuffer>> {
  const dir = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command("qemu-img", {
      args: ["create", "-f", "raw", `${dir}/empty.img`, "1M"],
      stdout: "null",
    }).output();
    if (!out.success) throw new Error("qemu-img create failed");
    return await Deno.readFile(`${dir}/empty.img`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Lowercase hex SHA-256. */
export function sha256Hex(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** A logger that keeps lines (and prints nothing). */
export function memoryLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger("agent", "debug", (l) => lines.push(l)), lines };
}

/**
 * True while process `pid` exists and has not finished exiting (from `/proc/<pid>/status`):
 * a zombie counts as gone once its last thread is (until then it still holds its files, so
 * QEMU's pidfile lock and sockets). A daemonized QEMU is reaped by PID 1 only eventually.
 */
export async function pidAlive(pid: number): Promise<boolean> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const state = /^State:\s+(\S)/m.exec(status)?.[1];
    const threads = Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 1);
    return !(state === "Z" && threads <= 1);
  } catch {
    return false;
  }
}

/** Waits until process `pid` is gone (up to `ms`). */
export async function waitGone(pid: number, ms = 10_000): Promise<void> {
  await waitUntil(async () => !(await pidAlive(pid)), ms, `process ${pid} to exit`);
}

/** Entry names of a directory ([] when missing). */
export async function listDir(path: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) out.push(e.name);
  } catch { /* missing */ }
  return out.sort();
}

/**
 * Kills (SIGKILL through the pidfile lock, as the agent does) every QEMU whose pidfile is under
 * `<runDir>/vms/*`: test cleanup, since QEMU outlives the agent and its VmManager.
 *
 * @returns the pids killed
 */
export async function killQemus(runDir: string): Promise<number[]> {
  const killed: number[] = [];
  for (const id of await listDir(`${runDir}/vms`)) {
    const pidFile = `${runDir}/vms/${id}/qemu.pid`;
    const pid = await lockedPidOf(pidFile);
    if (pid === null) continue;
    await new Deno.Command("pkill", { args: ["-KILL", "-F", pidFile, "-L"] }).output();
    await waitUntil(async () => !(await pidAlive(pid)), 10_000, `QEMU ${pid} to die`);
    killed.push(pid);
  }
  return killed;
}

/** `pgrep -F <pidFile> -L`: the pid holding the pidfile's lock, or null. */
export async function lockedPidOf(pidFile: string): Promise<number | null> {
  const out = await new Deno.Command("pgrep", {
    args: ["-F", pidFile, "-L"],
    stdout: "piped",
    stderr: "null",
  }).output();
  return out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : null;
}

/** Pids of the running QEMUs whose command line mentions `needle` (e.g. a VM id). */
export async function qemuPidsMentioning(needle: string): Promise<number[]> {
  const out = await new Deno.Command("pgrep", {
    args: ["-f", `qemu-system.*${needle}`],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n").filter(Boolean).map(Number);
}

/** The parent pid of `pid` (from /proc/<pid>/stat). */
export async function parentPid(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

/**
 * Waits until `pred` holds, checking every 20 ms (a condition, not a fixed delay).
 *
 * @throws Error naming `what` after `ms`
 */
export async function waitUntil(
  pred: () => boolean | Promise<boolean>,
  ms = 30_000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A 1 MiB raw disk whose boot sector powers the machine off through ACPI as soon as the
 * firmware runs it (`out 0x604, 0x2000` and `out 0xb004, 0x2000`: SLP_EN with sleep type 0,
 * soft-off, at the PM1a control port of QEMU's q35 and i440fx firmware layouts): a guest that
 * powers itself off (QMP `SHUTDOWN`, `guest: true`, `guest-shutdown`) in well under a second of
 * TCG, without a kernel.
 */
export function poweroffBootImage(): Uint8Array<ArrayBuffer> {
  const code = [
    ...[0xba, 0x04, 0x06], // mov dx, 0x604
    ...[0xb8, 0x00, 0x20], // mov ax, 0x2000
    0xef, // out dx, ax
    ...[0xba, 0x04, 0xb0], // mov dx, 0xb004
    0xef, // out dx, ax
    0xf4, // hlt
    ...[0xeb, 0xfd], // jmp back to hlt
  ];
  const img = new Uint8Array(1024 * 1024);
  img.set(code);
  img.set([0x55, 0xaa], 510); // boot signature
  return img;
}

/**
 * Writes an agent root's bootstrap files for fake control plane `cp` (test/agent/fake_cp.ts):
 * `etc/bootstrap.env` (its URL and CA fingerprint, node `node-a`) and `etc/bootstrap-token`.
 */
export async function writeBootstrapFiles(
  root: string,
  cp: { url: string; fingerprint: string; token: string },
): Promise<void> {
  await Deno.writeTextFile(
    `${root}/etc/bootstrap.env`,
    `OTHERIX_BOOTSTRAP__CP_URL=${cp.url}\nOTHERIX_BOOTSTRAP__CA_FINGERPRINT=${cp.fingerprint}\n` +
      "OTHERIX_BOOTSTRAP__NODE_NAME=node-a\n",
  );
  await Deno.writeTextFile(`${root}/etc/bootstrap-token`, cp.token + "\n", { mode: 0o600 });
}

/**
 * Starts `otherix-agent` on `<root>/etc/agent.yaml` under its sandbox (roots `<root>/{etc,
 * state,run}`) with a clean environment; its stderr (the log) accumulates in `output()`.
 */
export function spawnSandboxedAgent(root: string): {
  child: Deno.ChildProcess;
  output(): string;
  /** Resolves once stderr is closed. */
  reading: Promise<void>;
} {
  const roots = { config: `${root}/etc`, state: `${root}/state`, run: `${root}/run` };
  const env: Record<string, string> = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
  for (const k of ["HOME", "DENO_DIR"]) if (Deno.env.get(k)) env[k] = Deno.env.get(k)!;
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix-agent", roots, ["--config", `${root}/etc/agent.yaml`]),
    clearEnv: true,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) log += chunk;
  })();
  return { child, output: () => log, reading };
}
