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
 * current-cluster: production
 * ```
 *
 * at `--config` > `$OTHERIX_CONFIG` > `~/.otherix/config`, written atomically (sibling temp
 * file, fsync, rename) with mode 0600 in a 0700 directory. Passwords are never stored.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { UsageError } from "./errors.ts";

/** `apiVersion` of the config document. */
export const CONFIG_API_VERSION = "otherix/v1";
/** `kind` of the config document. */
export const CONFIG_KIND = "Config";
/** Env var naming the config file (layer 2 of the file-location precedence). */
export const CONFIG_ENV = "OTHERIX_CONFIG";

/** One stored cluster: where it is and the long-lived API token to use. */
export const ClusterEntrySchema = z.looseObject({
  name: z.string().min(1),
  server: z.string().min(1),
  token: z.string().min(1),
});
/** A stored cluster. */
export type ClusterEntry = z.infer<typeof ClusterEntrySchema>;

/** The config document. Unknown keys are kept, so newer CLIs' fields survive a rewrite. */
export const CliConfigSchema = z.looseObject({
  apiVersion: z.literal(CONFIG_API_VERSION),
  kind: z.literal(CONFIG_KIND),
  clusters: z.array(ClusterEntrySchema).nullish().transform((c) => c ?? []),
  "current-cluster": z.string().nullish().transform((c) => c || undefined),
});
/** The config document. */
export type CliConfig = z.infer<typeof CliConfigSchema>;

/** Cluster names: a letter or digit, then letters, digits, `.`, `_`, `-` (at most 63). */
export const ClusterNameSchema = z.string().regex(
  /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
  "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
);

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
  return join(home, ".otherix", "config");
}

/**
 * Reads the config at `path`; a missing or empty file is an empty config.
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
  return parseConfigText(text, path);
}

/** Parses config text (see {@link loadConfig}); `source` names it in errors. */
export function parseConfigText(text: string, source: string): CliConfig {
  if (text.trim() === "") return emptyConfig();
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new UsageError(`config ${source} is not valid YAML: ${(e as Error).message}`);
  }
  const parsed = CliConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues
      .map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`)
      .join("; ");
    throw new UsageError(`config ${source} is invalid: ${why}`);
  }
  const seen = new Set<string>();
  for (const c of parsed.data.clusters) {
    if (seen.has(c.name)) {
      throw new UsageError(`config ${source} is invalid: cluster "${c.name}" is defined twice`);
    }
    seen.add(c.name);
  }
  return parsed.data;
}

/** Serializes a config as the YAML document written to disk. */
export function configToYaml(config: CliConfig): string {
  const { apiVersion: _a, kind: _k, clusters, "current-cluster": current, ...rest } = config;
  const doc: Record<string, unknown> = {
    apiVersion: CONFIG_API_VERSION,
    kind: CONFIG_KIND,
    clusters: clusters.map(({ name, server, token, ...more }) => ({
      name,
      server,
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
  const dir = dirname(path);
  await ensurePrivateDir(dir);
  const tmp = join(dir, `.${basename(path)}.tmp-${crypto.randomUUID().slice(0, 8)}`);
  const bytes = new TextEncoder().encode(configToYaml(config));
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
