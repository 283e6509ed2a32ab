/**
 * Shared fixtures of the agent tests: a temporary agent root, a loopback HTTP server serving
 * images, a tiny raw backing image.
 *
 * @module
 */
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

/** True while `/proc/<pid>` exists. */
export async function pidAlive(pid: number): Promise<boolean> {
  return await Deno.stat(`/proc/${pid}`).then(() => true, () => false);
}

/** Entry names of a directory ([] when missing). */
export async function listDir(path: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) out.push(e.name);
  } catch { /* missing */ }
  return out.sort();
}
