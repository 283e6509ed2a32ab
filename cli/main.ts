/**
 * `otherix`, the kubectl-style CLI: builds the commander program from the command modules
 * and runs it. Exit status is 0 on success and 1 on any error (usage, API or transport).
 *
 * @module
 */
import { Command, CommanderError } from "commander";
import { registerClusterCommands } from "./commands/cluster.ts";
import { registerConfigCommands } from "./commands/config.ts";
import { registerNodeCommands } from "./commands/node.ts";
import { registerPoolCommands } from "./commands/pool.ts";
import { registerVmCommands } from "./commands/vm.ts";
import { addGlobalOptions } from "./common.ts";
import { CliError } from "./errors.ts";
import { denoIo, type Io } from "./io.ts";

/** Builds the full `otherix` command tree writing through `io`. */
export function buildProgram(io: Io): Command {
  const program = new Command("otherix")
    .description("Otherix CLI: manage clusters, nodes and VMs")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError("(add --help for usage)");
  addGlobalOptions(program);
  registerConfigCommands(program, io);
  registerNodeCommands(program, io);
  registerVmCommands(program, io);
  registerPoolCommands(program, io);
  registerClusterCommands(program, io);
  return program;
}

/**
 * Runs the CLI with user arguments `argv` (no program name) and returns the exit status.
 * Errors are printed to stderr as one classified line (see `errors.ts`).
 */
export async function run(argv: string[], io: Io): Promise<number> {
  try {
    await buildProgram(io).parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1; // commander printed it
    if (e instanceof CliError) {
      io.err(e.render() + "\n");
      return 1;
    }
    const err = e as Error;
    io.err(`error: ${err?.message ?? String(e)}\n`);
    if (io.env("OTHERIX_DEBUG")) io.err(`${err?.stack ?? ""}\n`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await run(Deno.args, denoIo()));
}
