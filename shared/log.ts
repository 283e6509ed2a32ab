/**
 * Structured JSON logs, one object per line on stderr:
 * `{"ts":"…","level":"info","component":"agent","msg":"agent: bootstrap complete", …fields}`.
 *
 * Callers log token ids, never token values, and redact URLs themselves. Whatever they pass,
 * every line also goes through a safety net ({@link redactLogRecord}; issue 9, "credentials
 * are never logged"): URL credentials anywhere in the message, a field value or a field name
 * become `***` (`http://***@nas/img.qcow2`, shared/url_redact.ts), and the values of fields
 * named like secrets ({@link isSecretFieldName}) are replaced by `***`, at any depth.
 *
 * @module
 */
import { REDACTED, redactText } from "./url_redact.ts";

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

/** Words that make a field name a secret's (whole words of the name, any case). */
const SECRET_WORDS = new Set([
  "password",
  "passwords",
  "passwd",
  "passphrase",
  "token",
  "tokens",
  "secret",
  "secrets",
  "authorization",
]);

/** Last words that make a name describe a secret rather than hold it (`token_id`). */
const METADATA_WORDS = new Set(["id", "ids", "kid", "name", "names", "type", "count"]);

/** The words of a field name: `clientSecret`, `client-secret`, `CLIENT_SECRET` → client, secret. */
function wordsOf(name: string): string[] {
  return name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase().split(/[^a-z0-9]+/)
    .filter(Boolean);
}

/**
 * True when a field called `name` holds a secret: one of its words is `password`, `passwd`,
 * `passphrase`, `token`, `secret` or `authorization` (singular or plural), or it has the words
 * `private key` — unless its last word says it only describes one (`id`, `ids`, `kid`,
 * `name`, `names`, `type`, `count`: `token_id`, `secret_name`). Words are split at `_`, `-`,
 * `.`, spaces and camelCase humps, so `Authorization`, `access_token`, `clientSecret` and
 * `ca_private_key` are secrets.
 */
export function isSecretFieldName(name: string): boolean {
  const words = wordsOf(name);
  if (words.length > 1 && METADATA_WORDS.has(words[words.length - 1])) return false;
  return words.some((w, i) =>
    SECRET_WORDS.has(w) || (w === "private" && (words[i + 1] === "key" || words[i + 1] === "keys"))
  );
}

/**
 * `value` as it may be logged (JSON-ready): strings through {@link redactText} (URL
 * credentials → `***`), `Error`s as their (redacted) message, objects and arrays walked at any
 * depth — a secret-named field's value ({@link isSecretFieldName}, unless null or undefined)
 * becomes `***` and field names lose URL credentials too —, `toJSON()` honoured (dates),
 * bigints as decimal strings, and a reference cycle as `[circular]`.
 */
export function redactLogRecord(value: unknown): unknown {
  return redactValue(value, new Set());
}

function redactValue(value: unknown, path: Set<object>): unknown {
  if (typeof value === "string") return redactText(value);
  if (typeof value === "bigint") return value.toString();
  if (value === null || typeof value !== "object") return value;
  if (value instanceof Error) return redactText(value.message);
  const json = (value as { toJSON?: unknown }).toJSON;
  if (typeof json === "function") return redactValue(json.call(value), path);
  if (path.has(value)) return "[circular]";
  path.add(value);
  try {
    if (Array.isArray(value)) return value.map((v) => redactValue(v, path));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[redactText(k)] = isSecretFieldName(k) && v !== null && v !== undefined
        ? REDACTED
        : redactValue(v, path);
    }
    return out;
  } finally {
    path.delete(value);
  }
}

/**
 * Creates a logger for `component` that drops lines below `level`. Every line is redacted
 * ({@link redactLogRecord}) before it reaches `sink`.
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
    sink(JSON.stringify(redactLogRecord(rec)));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    with: (f) => createLogger(component, level, sink, { ...base, ...f }),
  };
}
