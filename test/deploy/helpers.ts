/**
 * Helpers of the deployment tests: stage an install with `scripts/install.sh --destdir` from
 * stand-in binaries (real ones need `deno compile`, which needs Deno's runtime download), and
 * read systemd unit files.
 *
 * @module
 */
import { join } from "node:path";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { baseEnv } from "../harness.ts";

/** Result of a command. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `argv` (clean env plus `env`) and captures its output. */
export async function sh(argv: string[], env: Record<string, string> = {}): Promise<Ran> {
  const [cmd, ...args] = argv;
  const out = await new Deno.Command(cmd, {
    args,
    cwd: REPO_ROOT,
    env: { ...baseEnv(), ...env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Writes the three stand-in binaries into `dir` (each prints its name). */
export async function fakeBinaries(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (const b of ["otherix-api", "otherix-agent", "otherix"]) {
    await Deno.writeTextFile(join(dir, b), `#!/bin/sh\necho ${b}\n`, { mode: 0o755 });
  }
}

/** `scripts/install.sh ARGS…`. */
export function install(args: string[]): Promise<Ran> {
  return sh(["bash", join(REPO_ROOT, "scripts/install.sh"), ...args]);
}

/** A unit file's `Key=value` lines per section (repeated keys keep every value, in order). */
export function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let cur: Map<string, string[]> | null = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      cur = new Map();
      sections.set(sec[1], cur);
      continue;
    }
    const eq = line.indexOf("=");
    if (!cur || eq < 0) throw new Error(`bad unit line: ${line}`);
    const key = line.slice(0, eq);
    cur.set(key, [...(cur.get(key) ?? []), line.slice(eq + 1)]);
  }
  return sections;
}

/** Every file and directory under `root` with its mode (octal) and, for files, its content. */
export async function tree(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    const entries = [...Deno.readDirSync(dir)].sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const p = join(dir, e.name);
      const st = await Deno.lstat(p);
      const mode = (st.mode! & 0o7777).toString(8).padStart(4, "0");
      const rel = p.slice(root.length);
      if (e.isDirectory) {
        out.push(`${mode} ${rel}/`);
        await walk(p);
      } else {
        const sum = new Uint8Array(
          await crypto.subtle.digest("SHA-256", await Deno.readFile(p)),
        ).slice(0, 6).reduce((s, b) => s + b.toString(16).padStart(2, "0"), "");
        out.push(`${mode} ${rel} ${sum}`);
      }
    }
  };
  await walk(root);
  return out;
}
