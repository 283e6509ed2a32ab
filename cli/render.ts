/**
 * Output renderers: aligned tables, `key: value` blocks, JSON and YAML, plus small value
 * formatters (token masking, byte sizes, yes/no).
 *
 * @module
 */
import { stringify as stringifyYaml } from "yaml";
import { API_TOKEN_PREFIX } from "../shared/constants.ts";

/** Output formats accepted by `-o/--output`. */
export const OUTPUT_FORMATS = ["table", "text", "json", "yaml"] as const;
/** An output format. */
export type OutputFormat = typeof OUTPUT_FORMATS[number];

/** Display width of a string (code points; good enough for the ASCII we print). */
function width(s: string): number {
  return [...s].length;
}

/**
 * Renders rows as an aligned table: the header uppercased, columns separated by at least
 * three spaces, no trailing whitespace. Empty cells render as `""`.
 *
 * @example
 * ```ts
 * renderTable(["name", "status"], [["demo-vm", "running"]]);
 * // "NAME      STATUS\ndemo-vm   running\n"
 * ```
 */
export function renderTable(headers: string[], rows: string[][]): string {
  const table = new TableWriter(headers, rows);
  return table.header() + rows.map((r) => table.row(r)).join("");
}

/**
 * An aligned table printed in parts (`--watch`): the header and the initial rows fix the
 * column widths (as {@link renderTable} renders them); rows printed later reuse those widths,
 * a longer cell pushing the rest of its own row to the right.
 */
export class TableWriter {
  readonly #headers: string[];
  readonly #widths: number[];

  constructor(headers: string[], rows: string[][] = []) {
    this.#headers = headers.map((h) => h.toUpperCase());
    const all = [this.#headers, ...rows];
    this.#widths = headers.map((_, i) => Math.max(...all.map((r) => width(r[i] ?? ""))));
  }

  /** The header line. */
  header(): string {
    return this.row(this.#headers);
  }

  /** One row (cells in header order), newline-terminated, without trailing whitespace. */
  row(cells: string[]): string {
    return this.#headers
      .map((_, i) => {
        const cell = cells[i] ?? "";
        return i === this.#headers.length - 1
          ? cell
          : cell + " ".repeat(Math.max(0, this.#widths[i] - width(cell)));
      })
      .join("   ")
      .trimEnd() + "\n";
  }
}

/** A `key: value` entry; a nested list renders as an indented section. */
export type KvEntry = [
  key: string,
  value: string | number | boolean | KvEntry[] | null | undefined,
];

/**
 * Renders `key: value` lines. Entries whose value is `null`/`undefined` are skipped (the
 * renderer prints only what the server populated); nested entries are indented two spaces.
 */
export function renderKeyValues(entries: KvEntry[], indent = 0): string {
  const pad = " ".repeat(indent);
  let out = "";
  for (const [key, value] of entries) {
    if (value === null || value === undefined) continue;
    if (Array.isArray(value)) {
      out += `${pad}${key}:\n${renderKeyValues(value, indent + 2)}`;
    } else {
      out += `${pad}${key}: ${value}\n`;
    }
  }
  return out;
}

/** Pretty JSON (2-space indent) with a trailing newline. */
export function renderJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + "\n";
}

/** YAML document of `value`. */
export function renderYaml(value: unknown): string {
  return stringifyYaml(value);
}

/**
 * Masks a secret for display: `otx_abcd…(masked)`. Keeps the `otx_` prefix and four more
 * characters when the token is long enough to stay secret (≥ 16 characters after the
 * prefix); otherwise only the prefix (or nothing) is shown.
 */
export function maskToken(token: string): string {
  const prefix = token.startsWith(API_TOKEN_PREFIX) ? API_TOKEN_PREFIX : "";
  const rest = token.slice(prefix.length);
  const visible = rest.length >= 16 ? rest.slice(0, 4) : "";
  return `${prefix}${visible}…(masked)`;
}

/** Binary byte size with one decimal: `512B`, `1.5KiB`, `80.0GiB`. */
export function formatBytes(bytes: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  if (bytes < 1024) return `${bytes}B`;
  let v = bytes;
  let unit = "B";
  for (const u of units) {
    if (v < 1024) break;
    v /= 1024;
    unit = u;
  }
  return `${v.toFixed(1)}${unit}`;
}

/** `yes` / `no`. */
export function yesNo(value: boolean): string {
  return value ? "yes" : "no";
}

/**
 * Renders `raw` as JSON or YAML when `format` asks for it, else the human form `human()`.
 * List commands pass the whole list as `{items, next_cursor: null}` (see {@link listEnvelope}).
 */
export function renderAs(format: string, raw: unknown, human: () => string): string {
  if (format === "json") return renderJson(raw);
  if (format === "yaml") return renderYaml(raw);
  return human();
}

/** The list envelope printed for `-o json|yaml` once every page was fetched. */
export function listEnvelope(items: unknown[]): { items: unknown[]; next_cursor: null } {
  return { items, next_cursor: null };
}

/**
 * Renders one resource for `get`: `json`/`yaml` from `raw`, `table` as a one-row table,
 * anything else (`text`) as `key: value` lines.
 */
export function renderOne(
  format: string,
  raw: unknown,
  table: () => string,
  keyValues: () => string,
): string {
  return renderAs(format, raw, () => (format === "table" ? table() : keyValues()));
}
