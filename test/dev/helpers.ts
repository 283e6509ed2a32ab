/**
 * Helpers of the dev-pipeline tests: run a target the way a developer does (`deno task
 * <target>`), with stand-ins for macOS and Lima tools (test/dev/standins/) first on PATH.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { baseEnv } from "../harness.ts";

/** The directory of the stand-in commands (`limactl`, `sysctl`, `sw_vers`, `systemctl`, …). */
export const STANDINS = join(REPO_ROOT, "test/dev/standins");

/** Result of a target. */
export interface TargetResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `deno task -q <target>` in the repository with a clean environment: PATH (stand-ins
 * first when `standins`), DENO_DIR, HOME and `env`.
 */
export async function runTask(
  target: string,
  env: Record<string, string>,
  opts: { standins?: boolean } = {},
): Promise<TargetResult> {
  const base = baseEnv();
  const path = [
    ...(opts.standins ? [STANDINS] : []),
    dirname(Deno.execPath()),
    base.PATH,
  ].join(":");
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", target],
    cwd: REPO_ROOT,
    env: { ...base, PATH: path, ...env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The invocations a stand-in logged (one per line), or [] when none. */
export async function invocations(log: string, prefix?: string): Promise<string[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(log);
  } catch { /* nothing logged */ }
  const lines = text.split("\n").filter((l) => l !== "");
  return prefix ? lines.filter((l) => l.startsWith(prefix + " ")) : lines;
}

/** Failure text for a target result. */
export function show(r: TargetResult): string {
  return `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

/** The summary seed-dev prints (spec 001 "Step 1 — run seed-dev", "Sample output"). */
export const SEED_SUMMARY = new RegExp(
  "^>> seed-dev complete\\n" +
    "node : (?<node>[a-z0-9-]+) \\(id=(?<id>[0-9a-f-]{36})\\)\\n" +
    "pool : (?<pool>[a-z0-9-]+) \\(cluster default, CP-auto-provisioned on ready nodes\\)\\n" +
    "images : none staged \\(vm create fetches the image URL on first use\\)\\n$",
  "m",
);

/** Kills the process whose pid is in `pidFile` (and its group), if any. */
export async function killPidFile(pidFile: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await Deno.readTextFile(pidFile)).trim());
  } catch {
    return;
  }
  if (!(pid > 1)) return;
  for (const target of [-pid, pid]) {
    try {
      Deno.kill(target, "SIGKILL");
    } catch { /* gone */ }
  }
}
