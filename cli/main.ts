/**
 * `otherix`, the kubectl-style CLI. Exit status is 0 on success and 1 on any error (usage,
 * API or transport).
 *
 * Start-up (issue 10): this entry point loads only the fast path (`fast_path.ts`: `vm list`,
 * `vm get`, `__complete` without commander, zod or YAML); every other invocation imports the
 * commander program (`program.ts`), which loads just the invoked command group. Nothing
 * runs at import time. `bundle_main.ts` is the entry of the shipped bundle.
 *
 * @module
 */
import { reportError } from "./errors.ts";
import { matchFastCommand, runFastCommand } from "./fast_path.ts";
import { denoIo, type Io } from "./io.ts";

/** The commander program module (`program.ts`). */
export type ProgramModule = typeof import("./program.ts");

/**
 * Loads `program.ts` through a specifier the module graph cannot follow: run from source,
 * Deno resolves every statically analyzable dynamic import before the program starts, which
 * for the commander program (every command, commander, zod, YAML, …) costs ~140 ms that the
 * fast path would pay for nothing. The bundle's entry (`bundle_main.ts`) passes a literal
 * import instead, so the bundler includes the program.
 */
export function loadProgramFromSource(): Promise<ProgramModule> {
  return import(new URL("./program.ts", import.meta.url).href);
}

/**
 * Runs the CLI with user arguments `argv` (no program name) and returns the exit status.
 * Errors are printed to stderr as one classified line (see `errors.ts`). `loadProgram` loads
 * the commander program for what the fast path does not serve.
 */
export async function run(
  argv: string[],
  io: Io,
  loadProgram: () => Promise<ProgramModule> = loadProgramFromSource,
): Promise<number> {
  const fast = matchFastCommand(argv);
  if (!fast) return await (await loadProgram()).runProgram(argv, io);
  try {
    await runFastCommand(fast, io);
    return 0;
  } catch (e) {
    return reportError(e, io);
  }
}

if (import.meta.main) {
  Deno.exit(await run(Deno.args, denoIo()));
}
