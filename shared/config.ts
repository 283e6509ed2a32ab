/**
 * Config loading shared by `otherix-api` and `otherix-agent`: a YAML file validated by a zod
 * schema, overridden by `OTHERIX_<SECTION>__<KEY>` environment variables (double underscore
 * nests; DESIGN.md "Env overrides"). Invalid config fails with a message naming the key.
 *
 * Only keys the schema declares are read from the environment (one `Deno.env.get` per key),
 * so the binaries need env permission for `OTHERIX_*` only.
 *
 * @module
 */
import { z } from "zod";
import { parse as parseYaml } from "yaml";

/** Raised for unreadable or invalid config; `message` names the file and the key. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Env var prefix of config overrides. */
export const ENV_PREFIX = "OTHERIX_";

/**
 * Every leaf path of an object schema, as `["section", "key"]` arrays. Descends through
 * `z.object`, optional/default/nullable wrappers; anything else is a leaf.
 */
export function leafPaths(schema: z.ZodType, prefix: string[] = []): string[][] {
  return leaves(schema, prefix).map(([path]) => path);
}

/** Every leaf of an object schema with its (unwrapped) schema. */
function leaves(schema: z.ZodType, prefix: string[] = []): [string[], z.ZodType][] {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject) {
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([k, s]) =>
      leaves(s, [...prefix, k])
    );
  }
  return prefix.length ? [[prefix, inner]] : [];
}

/** True for a string leaf, also one parsed further (`z.string().transform(…)`). */
function isStringLeaf(schema: z.ZodType): boolean {
  const s = schema instanceof z.ZodPipe ? unwrap(schema.in as z.ZodType) : schema;
  return s instanceof z.ZodString;
}

function unwrap(schema: z.ZodType): z.ZodType {
  let s: z.ZodType = schema;
  while (
    s instanceof z.ZodOptional || s instanceof z.ZodDefault || s instanceof z.ZodNullable ||
    s instanceof z.ZodPrefault
  ) {
    s = (s as unknown as { unwrap(): z.ZodType }).unwrap();
  }
  return s;
}

/** The env var name for a config path: `["bootstrap","cp_url"]` → `OTHERIX_BOOTSTRAP__CP_URL`. */
export function envName(path: string[]): string {
  return ENV_PREFIX + path.map((p) => p.toUpperCase()).join("__");
}

/**
 * Applies env overrides for every leaf of `schema` to `raw` (mutates and returns it).
 * Values of non-string keys are parsed as YAML scalars/flow values, so `15`, `true` and
 * `[a, b]` keep their types; string keys take the value verbatim (`007` stays a string). An
 * empty value unsets the key.
 *
 * @param getEnv lookup function; defaults to `Deno.env.get`
 */
export function applyEnvOverrides(
  schema: z.ZodType,
  raw: Record<string, unknown>,
  getEnv: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Record<string, unknown> {
  for (const [path, leaf] of leaves(schema)) {
    const value = getEnv(envName(path));
    if (value === undefined) continue;
    let node = raw;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      if (typeof next !== "object" || next === null || Array.isArray(next)) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    // A string key takes the value verbatim: YAML would turn `007` or `1e3` into numbers.
    let parsed: unknown = value;
    if (!isStringLeaf(leaf)) {
      try {
        parsed = parseYaml(value);
      } catch {
        parsed = value;
      }
    }
    // Strings that YAML would turn into null stay strings; empty means "unset".
    node[path[path.length - 1]] = value === "" ? undefined : parsed ?? value;
  }
  return raw;
}

/**
 * Parses `text` (YAML) with env overrides and validates it with `schema`.
 *
 * @throws ConfigError naming the first invalid key, e.g. `api.yaml: store.data_dir: Required`
 */
export function parseConfig<T extends z.ZodType>(
  schema: T,
  text: string,
  source: string,
  getEnv?: (name: string) => string | undefined,
): z.infer<T> {
  let raw: unknown;
  try {
    raw = text.trim() === "" ? {} : parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${source}: not valid YAML: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${source}: must be a YAML mapping`);
  }
  applyEnvOverrides(schema, raw as Record<string, unknown>, getEnv);
  const result = schema.safeParse(raw);
  if (!result.success) {
    const msgs = result.error.issues.flatMap((i) => {
      if (i.code === "unrecognized_keys") {
        return i.keys.map((k) => `${[...i.path.map(String), k].join(".")}: unknown key`);
      }
      const key = i.path.map(String).join(".") || "(root)";
      const env = i.path.length ? ` (env ${envName(i.path.map(String))})` : "";
      return `${key}${env}: ${i.message}`;
    });
    throw new ConfigError(`${source}: invalid config: ${msgs.join("; ")}`);
  }
  return result.data;
}

/**
 * Reads and parses a config file (see {@link parseConfig}).
 *
 * @throws ConfigError when the file cannot be read or is invalid
 */
export async function loadConfigFile<T extends z.ZodType>(
  schema: T,
  path: string,
  getEnv?: (name: string) => string | undefined,
): Promise<z.infer<T>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`${path}: cannot read config: ${(e as Error).message}`);
  }
  return parseConfig(schema, text, path, getEnv);
}

/**
 * A `host:port` listen address (`":8080"` means all interfaces). Parsed into
 * `{hostname, port}`.
 */
export const ListenAddressSchema = z.string().transform((s, ctx) => {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]*)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: "custom", message: `must be host:port, got "${s}"` });
    return z.NEVER;
  }
  return { hostname: m[1] ?? (m[2] || "0.0.0.0"), port };
});
/** A parsed listen address. */
export type ListenAddress = { hostname: string; port: number };

/** An absolute filesystem path. */
export const AbsolutePathSchema = z.string().startsWith("/", "must be an absolute path");
