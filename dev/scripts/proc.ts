/**
 * Process helpers of the dev pipeline (dev/scripts/dev.ts): run a command with its output
 * shown or captured, and the one error type the targets fail with.
 *
 * @module
 */

/** A target failed; `message` says why and what to do. Exit status 1. */
export class DevError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DevError";
  }
}

/** Result of a captured command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@link run}. */
export interface RunOptions {
  /** Extra env vars (the rest is inherited). */
  env?: Record<string, string>;
  /** Text written to the command's stdin (otherwise stdin is closed). */
  stdin?: string;
  /** Capture stdout/stderr instead of showing them. */
  capture?: boolean;
  cwd?: string;
}

/**
 * Runs `argv` (looked up on PATH) and waits for it.
 *
 * @throws DevError when the program does not exist
 */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      env: opts.env,
      cwd: opts.cwd,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: opts.capture ? "piped" : "inherit",
      stderr: opts.capture ? "piped" : "inherit",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DevError(`${cmd}: command not found`);
    throw e;
  }
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: opts.capture ? dec.decode(out.stdout) : "",
    stderr: opts.capture ? dec.decode(out.stderr) : "",
  };
}

/**
 * Runs `argv` like {@link run} and fails unless it exits 0.
 *
 * @throws DevError naming the command and its error output
 */
export async function must(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const res = await run(argv, opts);
  if (res.code !== 0) {
    const detail = res.stderr.trim() || res.stdout.trim();
    throw new DevError(
      `\`${argv.join(" ")}\` exited with status ${res.code}${detail ? `: ${detail}` : ""}`,
    );
  }
  return res;
}

/** True when `name` is an executable on PATH. */
export function onPath(name: string, path = Deno.env.get("PATH") ?? ""): boolean {
  for (const dir of path.split(":")) {
    if (!dir) continue;
    try {
      const st = Deno.statSync(`${dir}/${name}`);
      if (st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** Prints a progress line of `target`: `>> target: message`. */
export function say(target: string, message: string): void {
  console.log(`>> ${target}: ${message}`);
}

/** Sleeps `ms` milliseconds (polling loops only). */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
