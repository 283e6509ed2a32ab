/**
 * Structured JSON logs, one object per line on stderr:
 * `{"ts":"…","level":"info","component":"agent","msg":"agent: bootstrap complete", …fields}`.
 *
 * Secrets are never passed to the logger; callers log token ids, never token values.
 *
 * @module
 */

/** Log levels in increasing severity. */
export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** A component logger. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose lines carry `fields` as well. */
  with(fields: Record<string, unknown>): Logger;
}

/** Where lines go; tests may capture them. */
export type LogSink = (line: string) => void;

const encoder = new TextEncoder();
const stderrSink: LogSink = (line) => {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
};

/**
 * Creates a logger for `component` that drops lines below `level`.
 *
 * @example
 * ```ts
 * const log = createLogger("agent", "info");
 * log.info("agent: bootstrap complete", { node: "node-a" });
 * ```
 */
export function createLogger(
  component: string,
  level: LogLevel = "info",
  sink: LogSink = stderrSink,
  base: Record<string, unknown> = {},
): Logger {
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] < ORDER[level]) return;
    const rec: Record<string, unknown> = {
      ts: new Date().toISOString(),
      level: lvl,
      component,
      msg,
      ...base,
      ...fields,
    };
    for (const [k, v] of Object.entries(rec)) {
      if (v instanceof Error) rec[k] = v.message;
    }
    sink(JSON.stringify(rec));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    with: (f) => createLogger(component, level, sink, { ...base, ...f }),
  };
}
