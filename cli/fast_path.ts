/**
 * The start-up fast path (issue 10): the commands people run in loops and on every Tab —
 * `vm list`, `vm get NAME` and the completion scripts' `__complete KIND` — run without
 * building the commander program. commander loads Node's compatibility layer (`node:process`,
 * `node:events`, `node:child_process`, …), which costs more than the rest of such a command.
 *
 * {@link matchFastCommand} recognises only the plain forms of these commands: global options
 * (`--config`, `--cluster`, `--endpoint`, `--token`, `--request-timeout`, as `--opt value` or
 * `--opt=value`) before the command words or after them, and the command's own options
 * (`vm list`: `--show-ids`, `-o table|wide|text|json`; `vm get`: `-o table|text|json`).
 * Anything else — `--help`, `--watch`, `-o yaml`, an unknown or malformed option, a bad value,
 * a missing or extra argument — is left to the commander program (`program.ts`), which then
 * produces the same help, output or error it always did. The fast path runs the same
 * functions the commander actions call (`vm_view.ts`, `complete_names.ts`), so both give the
 * same output; test/cli/fast_path_test.ts compares them.
 *
 * @module
 */
import { printNames } from "./complete_names.ts";
import { DEFAULT_REQUEST_TIMEOUT_SECONDS, type GlobalOptions } from "./connect.ts";
import { connectWith } from "./connect.ts";
import { parseDuration } from "./duration.ts";
import type { Io } from "./io.ts";
import { seg } from "./segment.ts";
import { printVm, printVmList, type VmGetFormat, type VmListFormat } from "./vm_view.ts";

/** A command the fast path serves, with its parsed options. */
export type FastCommand =
  | { command: "vm list"; globals: GlobalOptions; format: VmListFormat; showIds: boolean }
  | { command: "vm get"; globals: GlobalOptions; name: string; format: VmGetFormat }
  | { command: "__complete"; globals: GlobalOptions; kind: string };

/** Root options that take a value, by spelling, and their `GlobalOptions` key. */
const GLOBAL_VALUE_OPTIONS: Record<string, "config" | "cluster" | "endpoint" | "token"> = {
  "--config": "config",
  "--cluster": "cluster",
  "--endpoint": "endpoint",
  "--token": "token",
};

/** `-o` values each command prints itself (`yaml` goes to the commander path). */
const FORMATS: Record<"vm list" | "vm get", readonly string[]> = {
  "vm list": ["table", "wide", "text", "json"],
  "vm get": ["table", "text", "json"],
};

/**
 * Parses `argv` (user arguments, no program name) when it is a plain `vm list`, `vm get NAME`
 * or `__complete KIND` invocation (see the module doc); undefined for anything else.
 */
export function matchFastCommand(argv: readonly string[]): FastCommand | undefined {
  const globals: GlobalOptions = { requestTimeout: DEFAULT_REQUEST_TIMEOUT_SECONDS };
  const words: string[] = [];
  let output: string | undefined;
  let showIds = false;
  /** The command words are complete: its own options may follow. */
  const commandKnown = () =>
    (words[0] === "vm" && words.length >= 2) || (words[0] === "__complete" && words.length >= 1);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("-") || arg === "-") {
      words.push(arg);
      continue;
    }
    // Options may stand before the command words or after them, not between them.
    if (words.length > 0 && !commandKnown()) return undefined;
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const takeValue = (): string | undefined => {
      if (eq > 0) return arg.slice(eq + 1);
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("-")) return undefined;
      i++;
      return next;
    };
    if (name in GLOBAL_VALUE_OPTIONS || name === "--request-timeout") {
      const value = takeValue();
      if (!value) return undefined;
      if (name === "--request-timeout") {
        const seconds = parseDuration(value);
        if (seconds === null || seconds <= 0) return undefined;
        globals.requestTimeout = seconds;
      } else {
        globals[GLOBAL_VALUE_OPTIONS[name]] = value;
      }
    } else if (!commandKnown() || words[0] !== "vm") {
      return undefined;
    } else if (name === "--show-ids" && eq < 0) {
      showIds = true;
    } else if (name === "-o" || name === "--output") {
      output = takeValue();
      if (!output) return undefined;
    } else if (name.startsWith("-o") && !name.startsWith("--") && name.length > 2) {
      output = name.slice(2); // -ojson
    } else {
      return undefined;
    }
  }
  if (words[0] === "__complete" && words.length === 2) {
    return { command: "__complete", globals, kind: words[1] };
  }
  if (words[0] !== "vm") return undefined;
  if (words[1] === "list" && words.length === 2) {
    const format = output ?? "table";
    if (!FORMATS["vm list"].includes(format)) return undefined;
    return { command: "vm list", globals, format: format as VmListFormat, showIds };
  }
  if (words[1] === "get" && words.length === 3 && !showIds) {
    const format = output ?? "text";
    if (!FORMATS["vm get"].includes(format)) return undefined;
    return { command: "vm get", globals, name: words[2], format: format as VmGetFormat };
  }
  return undefined;
}

/**
 * Runs a matched command with the same functions the commander actions call.
 *
 * @throws UsageError / ApiCallError / TransportError as the command does
 */
export async function runFastCommand(c: FastCommand, io: Io): Promise<void> {
  switch (c.command) {
    case "__complete":
      return await printNames(c.kind, c.globals, io);
    case "vm list":
      return await printVmList(await connectWith(c.globals, io), io, c);
    case "vm get": {
      const path = `/v1/vms/${seg(c.name)}`; // a bad name fails before connecting
      return await printVm(await connectWith(c.globals, io), io, path, c.format);
    }
  }
}
