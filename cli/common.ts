/**
 * Pieces every command module uses: the global options, option-argument parsers, the
 * `-o/--output` option, and {@link connect}, which resolves endpoint + token and builds the
 * API client.
 *
 * @module
 */
import { type Command, InvalidArgumentError, Option } from "commander";
import type { ApiClient } from "./client.ts";
import { connectWith, DEFAULT_REQUEST_TIMEOUT_SECONDS, type GlobalOptions } from "./connect.ts";
import { parseDuration } from "./duration.ts";
import type { Io } from "./io.ts";
import { z } from "zod";
import { listEnvelope, OUTPUT_FORMATS, type OutputFormat, renderAs } from "./render.ts";

export { DEFAULT_REQUEST_TIMEOUT_SECONDS, type GlobalOptions };
export { seg } from "./segment.ts";

/** Parses an integer option argument (sign allowed; ranges are the server's business). */
export function parseIntArg(value: string): number {
  if (!/^[-+]?\d+$/.test(value.trim()) || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError("must be an integer.");
  }
  return Number(value);
}

/** Parses a duration option argument (`90s`, `10m`, `1h30m`, bare seconds) into seconds > 0. */
export function parseDurationArg(value: string): number {
  const seconds = parseDuration(value);
  if (seconds === null) {
    throw new InvalidArgumentError(
      "must be a duration like 90s, 10m, 1h or 1h30m (units d, h, m, s; a bare number is seconds).",
    );
  }
  if (seconds <= 0) throw new InvalidArgumentError("must be greater than zero.");
  return seconds;
}

/** Adds the global options to the root command. */
export function addGlobalOptions(program: Command): Command {
  return program
    .option("--config <path>", "config file (default: $OTHERIX_CONFIG, then ~/.otherix/config)")
    .option("--cluster <name>", "use this configured cluster instead of the current one")
    .option(
      "--endpoint <url>",
      "API server URL, or several comma-separated (replicas, tried in order; overrides" +
        " $OTHERIX_SERVER and the config)",
    )
    .option("--token <token>", "API token (overrides $OTHERIX_API_TOKEN and the config)")
    .addOption(
      new Option("--request-timeout <duration>", "per-request timeout (e.g. 30, 30s, 2m)")
        .argParser(parseDurationArg)
        .default(DEFAULT_REQUEST_TIMEOUT_SECONDS, `${DEFAULT_REQUEST_TIMEOUT_SECONDS}s`),
    );
}

/** The `-o/--output` option restricted to `formats`, defaulting to `fallback`. */
export function outputOption(
  fallback: OutputFormat,
  formats: readonly OutputFormat[] = OUTPUT_FORMATS,
): Option {
  return new Option("-o, --output <format>", "output format").choices(formats).default(fallback);
}

/** The global options as seen from `cmd` (any depth). */
export function globalsOf(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals() as GlobalOptions;
}

/** The `--wait-timeout` option (default 600s). */
export function waitTimeoutOption(): Option {
  return new Option("--wait-timeout <duration>", "how long --wait waits (e.g. 600s, 10m)")
    .argParser(parseDurationArg)
    .default(600, "600s");
}

/**
 * Resolves endpoints and token through the precedence table (see `resolve.ts`) and returns
 * a client for them (`connect.ts`).
 */
export async function connect(cmd: Command, io: Io): Promise<ApiClient> {
  return await connectWith(globalsOf(cmd), io);
}

/** What {@link printList} needs of a list command. */
export interface ListOutput<T> {
  /** API path of the paginated list (`{items, next_cursor}`). */
  path: string;
  /** The item schema. */
  item: z.ZodType<T>;
  /** Filters sent as query parameters (undefined ones are left out). */
  filters: Record<string, string | number | undefined>;
  /** `--limit` / `--cursor` as parsed (both undefined: fetch every page). */
  limit?: number;
  cursor?: string;
  /** `json` / `yaml` print the raw envelope; anything else the human table. */
  format: string;
  table: (items: T[]) => string;
}

/**
 * Prints a list the way every `… list` command does: one page with `--limit/--cursor` (the
 * next cursor on stderr as `next page: --cursor C`), else every page; `-o json|yaml` print the
 * API's envelope, other formats `table(items)`.
 *
 * @throws ApiCallError / TransportError from the API
 */
export async function printList<T>(client: ApiClient, io: Io, o: ListOutput<T>): Promise<void> {
  const raw = o.format === "json" || o.format === "yaml";
  if (o.limit !== undefined || o.cursor !== undefined) {
    const page = await client.json(
      "GET",
      o.path,
      z.object({ items: z.array(o.item), next_cursor: z.string().nullable() }),
      { query: { ...o.filters, limit: o.limit, cursor: o.cursor } },
    );
    if (raw) return io.out(renderAs(o.format, page.raw, String));
    io.out(o.table(page.data.items));
    if (page.data.next_cursor) io.err(`next page: --cursor ${page.data.next_cursor}\n`);
    return;
  }
  const { items, raw: all } = await client.listAll(o.path, o.item, o.filters);
  io.out(raw ? renderAs(o.format, listEnvelope(all), String) : o.table(items));
}
