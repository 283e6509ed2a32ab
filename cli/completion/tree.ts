/**
 * The command tree the completion scripts embed, read from the commander program itself (so
 * a new command or flag completes without touching the scripts): per command path
 * (`""`, `"vm"`, `"vm list"`), its subcommands, its flags, what each value-taking flag
 * completes to, and what its first argument completes to.
 *
 * @module
 */
import type { Command, Option } from "commander";
import { RESOURCE_KINDS, type ResourceKind } from "../complete_names.ts";

export { RESOURCE_KINDS, type ResourceKind };

/** What a value or argument completes to: fixed words, live names, or nothing (free text). */
export type ValueCompletion =
  | { kind: "words"; words: string[] }
  | { kind: "resource"; resource: ResourceKind }
  | { kind: "none" };

/** One command path's completion data. */
export interface CompletionNode {
  /** Space-joined command path below the root (`""` for the root). */
  path: string;
  /** Visible subcommand names. */
  subcommands: string[];
  /** Every flag spelling (`-o`, `--output`), global ones included. */
  flags: string[];
  /** Flags that take a value, by spelling, and what the value completes to. */
  values: Record<string, ValueCompletion>;
  /** The first positional argument's completion (none: no argument or free text). */
  argument: ValueCompletion;
}

/** Value-taking options named like a resource complete to that resource's names. */
const OPTION_RESOURCES: Record<string, ResourceKind> = {
  "--node": "node",
  "--pool": "pool",
  "--network": "network",
};

/**
 * Walks `program` (every visible command, depth first) into completion nodes; root options
 * count as flags of every path (commander accepts them after the subcommand too).
 */
export function completionTree(program: Command): CompletionNode[] {
  const globals = program.options.filter((o) => !o.hidden);
  const out: CompletionNode[] = [];
  const walk = (cmd: Command, path: string[], group: string | undefined) => {
    const subs = cmd.commands.filter((c) => !isHidden(c));
    const options = cmd === program
      ? globals
      : [...cmd.options.filter((o) => !o.hidden), ...globals];
    const values: Record<string, ValueCompletion> = {};
    const flags: string[] = [];
    for (const o of options) {
      const spellings = [o.short, o.long].filter((s): s is string => !!s);
      flags.push(...spellings);
      if (o.required || o.optional) { for (const s of spellings) values[s] = valueOf(o); }
    }
    flags.push("--help");
    out.push({
      path: path.join(" "),
      subcommands: subs.map((c) => c.name()),
      flags: [...new Set(flags)].sort(),
      values,
      argument: argumentOf(cmd, group),
    });
    for (const c of subs) walk(c, [...path, c.name()], path.length === 0 ? c.name() : group);
  };
  walk(program, [], undefined);
  return out;
}

function isHidden(c: Command): boolean {
  return c.name().startsWith("__") || (c as unknown as { _hidden?: boolean })._hidden === true;
}

function valueOf(o: Option): ValueCompletion {
  if (o.argChoices?.length) return { kind: "words", words: [...o.argChoices] };
  const resource = o.long ? OPTION_RESOURCES[o.long] : undefined;
  return resource ? { kind: "resource", resource } : { kind: "none" };
}

/**
 * The first argument of a command in a resource group (`vm get <name>`) completes to that
 * group's names, except `create` (a new name).
 */
function argumentOf(cmd: Command, group: string | undefined): ValueCompletion {
  const first = cmd.registeredArguments[0];
  if (!first || cmd.name() === "create") return { kind: "none" };
  if (first.argChoices?.length) return { kind: "words", words: [...first.argChoices] };
  const resource = RESOURCE_KINDS.find((k) => k === group);
  return resource ? { kind: "resource", resource } : { kind: "none" };
}
