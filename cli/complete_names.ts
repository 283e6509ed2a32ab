/**
 * `otherix __complete KIND`, the live-name lookup of the shell completion scripts
 * (`commands/completion.ts`): prints the names of one resource kind, one per line, sorted and
 * without duplicates; at most {@link COMPLETE_TIMEOUT_SECONDS} per request, and nothing at all
 * on any error (a Tab must never print noise or hang). Runs on the start-up fast path too
 * (`fast_path.ts`), so it loads no command-line library and no zod.
 *
 * @module
 */
import { connectWith, type GlobalOptions } from "./connect.ts";
import type { Io } from "./io.ts";
import { NamedWire } from "./wire_schemas.ts";

/** Resources whose names the scripts fetch live. */
export const RESOURCE_KINDS = ["vm", "node", "pool", "network"] as const;
/** A resource kind. */
export type ResourceKind = typeof RESOURCE_KINDS[number];

/** Longest a `__complete` lookup may take per request, seconds. */
export const COMPLETE_TIMEOUT_SECONDS = 2;

const PATHS: Record<ResourceKind, string> = {
  vm: "/v1/vms",
  node: "/v1/nodes",
  pool: "/v1/pools",
  network: "/v1/networks",
};

/**
 * Prints the names of `kind` (every page of its list endpoint); an unknown kind or any
 * failure (no endpoint configured, a refused connection, an error answer) prints nothing.
 * The request timeout is `g.requestTimeout` capped at {@link COMPLETE_TIMEOUT_SECONDS}.
 */
export async function printNames(kind: string, g: GlobalOptions, io: Io): Promise<void> {
  if (!(RESOURCE_KINDS as readonly string[]).includes(kind)) return;
  try {
    const requestTimeout = Math.min(g.requestTimeout, COMPLETE_TIMEOUT_SECONDS);
    const client = await connectWith({ ...g, requestTimeout }, io);
    const { items } = await client.listAll(PATHS[kind as ResourceKind], NamedWire);
    const names = [...new Set(items.map((i) => i.name))].sort();
    if (names.length) io.out(names.join("\n") + "\n");
  } catch {
    // Silent by design: completion must never print errors into the command line.
  }
}
