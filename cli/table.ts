/**
 * Output renderers that need no library: aligned tables, `key: value` blocks and JSON. The
 * start-up path (`vm list`, `vm get`) renders with these alone; `render.ts` adds YAML and the
 * format switch on top.
 *
 * @module
 */

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
