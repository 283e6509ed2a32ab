/**
 * Output renderers: aligned tables, `key: value` blocks and JSON (from `table.ts`, which
 * loads no library), YAML, plus small value formatters (token masking, byte sizes, yes/no).
 *
 * @module
 */
import { stringify as stringifyYaml } from "yaml";
import { API_TOKEN_PREFIX } from "../shared/constants.ts";
import { renderJson } from "./table.ts";

export { type KvEntry, renderJson, renderKeyValues, renderTable, TableWriter } from "./table.ts";

/** Output formats accepted by `-o/--output`. */
export const OUTPUT_FORMATS = ["table", "text", "json", "yaml"] as const;
/** An output format. */
export type OutputFormat = typeof OUTPUT_FORMATS[number];

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
