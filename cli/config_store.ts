/**
 * The kubectl-style credential store (spec: "CLI configuration"): a small YAML document
 *
 * ```yaml
 * apiVersion: otherix/v1
 * kind: Config
 * clusters:
 *   - name: production
 *     server: http://localhost:8080
 *     token: otx_…
 *   - name: ha
 *     server: [https://cp1.lan:8080, https://cp2.lan:8080]   # replicas, tried in order
 *     token: otx_…
 * current-cluster: production
 * ```
 *
 * at `--config` > `$OTHERIX_CONFIG` > `~/.otherix/config`, written atomically (sibling temp
 * file, fsync, rename) with mode 0600 in a 0700 directory. Passwords are never stored.
 * A cluster's `server` is one URL or a list of them (issue 11: control-plane replicas); a
 * single URL is written as a plain string, so files stay readable by CLIs without lists.
 *
 * Start-up (issue 10): the YAML library is loaded only to read an existing, non-empty file
 * or to write one, and the document is checked by hand (no zod).
 *
 * @module
 */
import { UsageError } from "./errors.ts";

/** `apiVersion` of the config document. */
export const CONFIG_API_VERSION = "otherix/v1";
/** `kind` of the config document. */
export const CONFIG_KIND = "Config";
/** Env var naming the config file (layer 2 of the file-location precedence). */
export const CONFIG_ENV = "OTHERIX_CONFIG";

/**
 * One stored cluster: where it is (`server`: one URL, or several replicas tried in order) and
 * the long-lived API token to use. Unknown keys are kept.
 */
export interface ClusterEntry {
  name: string;
  server: string | string[];
  token: string;
  [key: string]: unknown;
}

/** The config document. Unknown keys are kept, so newer CLIs' fields survive a rewrite. */
export interface CliConfig {
  apiVersion: typeof CONFIG_API_VERSION;
  kind: typeof CONFIG_KIND;
  clusters: ClusterEntry[];
  /** The cluster used without `--cluster`; undefined: none. */
  "current-cluster": string | undefined;
  [key: string]: unknown;
}

/** Cluster names: a letter or digit, then letters, digits, `.`, `_`, `-` (at most 63). */
const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * What is wrong with a cluster name (1-63 letters, digits, `.`, `_`, `-`, starting with a
 * letter or digit), or null when it is valid.
 */
export function clusterNameProblem(name: string): string | null {
  return CLUSTER_NAME_RE.test(name)
    ? null
    : "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit";
}

/** A cluster's endpoints as a list (`server` may hold one URL or several). */
export function serversOf(entry: Pick<ClusterEntry, "server">): string[] {
  return typeof entry.server === "string" ? [entry.server] : [...entry.server];
}

/** An empty config. */
export function emptyConfig(): CliConfig {
  return {
    apiVersion: CONFIG_API_VERSION,
    kind: CONFIG_KIND,
    clusters: [],
    "current-cluster": undefined,
  };
}

/**
 * Where the config file lives: `flag` (`--config`) > `$OTHERIX_CONFIG` > `~/.otherix/config`.
 *
 * @throws UsageError when only the default applies and `home` is unknown
 */
export function resolveConfigPath(
  flag: string | undefined,
  env: (name: string) => string | undefined,
): string {
  if (flag) return flag;
  const fromEnv = env(CONFIG_ENV);
  if (fromEnv) return fromEnv;
  const home = env("HOME");
  if (!home) {
    throw new UsageError(`cannot locate ~/.otherix/config: HOME is not set (use --config)`);
  }
  return `${home.replace(/\/+$/, "")}/.otherix/config`; // no node:path: start-up cost
}

/**
 * Reads the config at `path`; a missing or empty file is an empty config (and loads no YAML
 * library).
 *
 * @throws UsageError when the file is unreadable or not a valid config document
 */
export async function loadConfig(path: string): Promise<CliConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return emptyConfig();
    throw new UsageError(`cannot read config ${path}: ${(e as Error).message}`);
  }
  return await parseConfigText(text, path);
}

/** Parses config text (see {@link loadConfig}); `source` names it in errors. */
export async function parseConfigText(text: string, source: string): Promise<CliConfig> {
  if (text.trim() === "") return emptyConfig();
  const { parse: parseYaml } = await import("./yaml_text.ts");
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new UsageError(`config ${source} is not valid YAML: ${(e as Error).message}`);
  }
  return checkConfig(raw, source);
}

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const nonEmpty = (v: unknown): v is string => typeof v === "string" && v.length > 0;

/**
 * Checks a parsed config document: `apiVersion` `otherix/v1`, `kind` `Config`, `clusters`
 * (absent or null: none) each with a non-empty `name`, `server` (a URL string or a non-empty
 * list of them; the URLs are checked when used) and `token`, names unique, `current-cluster`
 * a string (absent, null or empty: none). Unknown keys are kept.
 *
 * @throws UsageError `config <source> is invalid: <path>: <problem>; …`
 */
export function checkConfig(raw: unknown, source: string): CliConfig {
  const problems: string[] = [];
  const bad = (path: string, what: string) => problems.push(`${path}: ${what}`);
  if (!isMap(raw)) {
    throw new UsageError(`config ${source} is invalid: (root): expected a mapping`);
  }
  if (raw.apiVersion !== CONFIG_API_VERSION) bad("apiVersion", `must be "${CONFIG_API_VERSION}"`);
  if (raw.kind !== CONFIG_KIND) bad("kind", `must be "${CONFIG_KIND}"`);
  const clusters = raw.clusters ?? [];
  if (!Array.isArray(clusters)) bad("clusters", "expected a list");
  const entries = Array.isArray(clusters) ? clusters : [];
  entries.forEach((c, i) => {
    if (!isMap(c)) return bad(`clusters.${i}`, "expected a mapping");
    if (!nonEmpty(c.name)) bad(`clusters.${i}.name`, "expected a non-empty string");
    const server = c.server;
    const okServer = nonEmpty(server) ||
      (Array.isArray(server) && server.length > 0 && server.every(nonEmpty));
    if (!okServer) {
      bad(`clusters.${i}.server`, "expected a URL or a non-empty list of URLs");
    }
    if (!nonEmpty(c.token)) bad(`clusters.${i}.token`, "expected a non-empty string");
  });
  const current = raw["current-cluster"];
  if (current !== undefined && current !== null && typeof current !== "string") {
    bad("current-cluster", "expected a string");
  }
  if (problems.length) {
    throw new UsageError(`config ${source} is invalid: ${problems.join("; ")}`);
  }
  const seen = new Set<string>();
  for (const c of entries as ClusterEntry[]) {
    if (seen.has(c.name)) {
      throw new UsageError(`config ${source} is invalid: cluster "${c.name}" is defined twice`);
    }
    seen.add(c.name);
  }
  return {
    ...raw,
    apiVersion: CONFIG_API_VERSION,
    kind: CONFIG_KIND,
    clusters: entries as ClusterEntry[],
    "current-cluster": (current as string | null | undefined) || undefined,
  };
}

/** Serializes a config as the YAML document written to disk. */
export async function configToYaml(config: CliConfig): Promise<string> {
  const { stringify: stringifyYaml } = await import("./yaml_text.ts");
  const { apiVersion: _a, kind: _k, clusters, "current-cluster": current, ...rest } = config;
  const doc: Record<string, unknown> = {
    apiVersion: CONFIG_API_VERSION,
    kind: CONFIG_KIND,
    clusters: clusters.map(({ name, server, token, ...more }) => ({
      name,
      server: Array.isArray(server) && server.length === 1 ? server[0] : server,
      token,
      ...more,
    })),
    ...(current ? { "current-cluster": current } : {}),
    ...rest,
  };
  return stringifyYaml(doc);
}

/**
 * Writes `config` to `path` atomically: a sibling temp file (mode 0600) is written, fsynced
 * and renamed over `path`, so readers see the old or the new file, never a partial one.
 * A missing parent directory is created with mode 0700 (an existing one is left as it is).
 */
export async function saveConfig(path: string, config: CliConfig): Promise<void> {
  const { basename, dirname, join } = await import("node:path");
  const dir = dirname(path);
  await ensurePrivateDir(dir);
  const tmp = join(dir, `.${basename(path)}.tmp-${crypto.randomUUID().slice(0, 8)}`);
  const bytes = new TextEncoder().encode(await configToYaml(config));
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      let rest = bytes;
      while (rest.length) rest = rest.subarray(await file.write(rest));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.chmod(tmp, 0o600); // mode at open is subject to the umask
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new UsageError(`cannot write config ${path}: ${(e as Error).message}`);
  }
  await syncDir(dir);
}

async function ensurePrivateDir(dir: string): Promise<void> {
  try {
    const info = await Deno.stat(dir);
    if (!info.isDirectory) throw new UsageError(`cannot write config: ${dir} is not a directory`);
    return;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`cannot write config in ${dir}: ${(e as Error).message}`);
    }
  }
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.chmod(dir, 0o700);
  } catch (e) {
    throw new UsageError(`cannot create config directory ${dir}: ${(e as Error).message}`);
  }
}

/** Best-effort fsync of a directory, so the rename itself is durable. */
async function syncDir(dir: string): Promise<void> {
  try {
    const f = await Deno.open(dir, { read: true });
    try {
      await f.sync();
    } finally {
      f.close();
    }
  } catch {
    // not supported everywhere; the rename already happened
  }
}

/** The cluster named `name`, if any. */
export function findCluster(config: CliConfig, name: string): ClusterEntry | undefined {
  return config.clusters.find((c) => c.name === name);
}

/**
 * Adds or replaces (`replace: true`) a cluster; with `use` it becomes the current cluster.
 *
 * @throws UsageError when the name exists and `replace` is false
 */
export function upsertCluster(
  config: CliConfig,
  entry: ClusterEntry,
  opts: { replace: boolean; use: boolean },
): CliConfig {
  const exists = findCluster(config, entry.name) !== undefined;
  if (exists && !opts.replace) {
    throw new UsageError(`cluster "${entry.name}" already exists (use --force to replace it)`);
  }
  const clusters = exists
    ? config.clusters.map((c) => (c.name === entry.name ? { ...c, ...entry } : c))
    : [...config.clusters, entry];
  return {
    ...config,
    clusters,
    "current-cluster": opts.use ? entry.name : config["current-cluster"],
  };
}

/**
 * Removes a cluster; removing the current cluster leaves no current cluster.
 *
 * @throws UsageError when no cluster has that name
 */
export function removeCluster(config: CliConfig, name: string, source: string): CliConfig {
  if (!findCluster(config, name)) throw notFound(name, source);
  const current = config["current-cluster"] === name ? undefined : config["current-cluster"];
  return {
    ...config,
    clusters: config.clusters.filter((c) => c.name !== name),
    "current-cluster": current,
  };
}

/**
 * Makes `name` the current cluster.
 *
 * @throws UsageError when no cluster has that name
 */
export function useCluster(config: CliConfig, name: string, source: string): CliConfig {
  if (!findCluster(config, name)) throw notFound(name, source);
  return { ...config, "current-cluster": name };
}

/** The error for a cluster name that the config at `source` does not define. */
export function notFound(name: string, source: string): UsageError {
  return new UsageError(`cluster "${name}" not found in ${source} (see 'otherix config list')`);
}
