/**
 * The full `otherix` command tree: builds the commander program from the command modules and
 * runs it (`main.ts` comes here for everything the start-up fast path does not serve).
 *
 * @module
 */
import { Command, CommanderError } from "commander";
import { addGlobalOptions } from "./common.ts";
import { reportError } from "./errors.ts";
import type { Io } from "./io.ts";
import { addHelpExamples } from "./help_examples.ts";

/** Registers one top-level command group on the program. */
type GroupLoader = (program: Command, io: Io) => Promise<void>;

/**
 * The top-level command groups, in help order, each loaded on demand (start-up: a command
 * imports only its own module graph, e.g. `vm list` never loads the console's WebSocket
 * client or the manifest engine).
 */
const GROUPS: [string, GroupLoader][] = [
  ["config", async (p, io) => (await import("./commands/config.ts")).registerConfigCommands(p, io)],
  ["node", async (p, io) => (await import("./commands/node.ts")).registerNodeCommands(p, io)],
  ["vm", async (p, io) => (await import("./commands/vm.ts")).registerVmCommands(p, io)],
  ["pool", async (p, io) => (await import("./commands/pool.ts")).registerPoolCommands(p, io)],
  [
    "network",
    async (p, io) => (await import("./commands/network.ts")).registerNetworkCommands(p, io),
  ],
  [
    "cluster",
    async (p, io) => (await import("./commands/cluster.ts")).registerClusterCommands(p, io),
  ],
  ["create", async (p, io) => (await import("./commands/create.ts")).registerCreateCommand(p, io)],
  ["apply", async (p, io) => (await import("./commands/apply.ts")).registerApplyCommand(p, io)],
  ["delete", async (p, io) => (await import("./commands/delete.ts")).registerDeleteCommand(p, io)],
  ["user", async (p, io) => (await import("./commands/user.ts")).registerUserCommands(p, io)],
  ["token", async (p, io) => (await import("./commands/token.ts")).registerTokenCommands(p, io)],
  ["audit", async (p, io) => (await import("./commands/audit.ts")).registerAuditCommands(p, io)],
  ["whoami", async (p, io) => (await import("./commands/whoami.ts")).registerWhoamiCommand(p, io)],
  ["login", async (p, io) => (await import("./commands/login.ts")).registerLoginCommand(p, io)],
  ["doctor", async (p, io) => (await import("./commands/doctor.ts")).registerDoctorCommand(p, io)],
  [
    "completion",
    async (p, io) => (await import("./commands/completion.ts")).registerCompletionCommand(p, io),
  ],
];

/** Root options that take a value (their argument is not a command name). */
const VALUE_OPTIONS = new Set([
  "--config",
  "--cluster",
  "--endpoint",
  "--token",
  "--request-timeout",
]);

/**
 * The top-level command `argv` invokes: its first word that is neither an option nor a root
 * option's value; undefined when there is none (`otherix`, `otherix --help`).
 */
export function invokedGroup(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--") return argv[i + 1];
    if (!a.startsWith("-")) return a;
    if (VALUE_OPTIONS.has(a)) i++;
  }
  return undefined;
}

/**
 * Builds the `otherix` command tree writing through `io`: with `only`, just that command
 * group (a known name); otherwise every group (help, unknown commands, completion scripts).
 */
export async function buildProgram(io: Io, only?: string): Promise<Command> {
  const program = new Command("otherix")
    .description("Otherix CLI: manage clusters, nodes and VMs")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .configureHelp({ showGlobalOptions: true })
    .showHelpAfterError("(add --help for usage)");
  addGlobalOptions(program);
  if (only === "__complete") {
    (await import("./commands/completion.ts")).registerCompleteHelper(program, io);
    return program;
  }
  const one = GROUPS.find(([name]) => name === only && name !== "completion");
  for (const [, load] of one ? [one] : GROUPS) await load(program, io);
  addHelpExamples(program);
  return program;
}

/**
 * Runs the CLI with user arguments `argv` (no program name) through the commander program and
 * returns the exit status: 0, or 1 after printing the error (commander's own usage errors
 * are printed by commander; the rest as one classified line, see `errors.ts`).
 */
export async function runProgram(argv: string[], io: Io): Promise<number> {
  try {
    await (await buildProgram(io, invokedGroup(argv))).parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1; // commander printed it
    return reportError(e, io);
  }
}
