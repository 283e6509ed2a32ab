/**
 * Which server and token a command uses (spec: "Authentication precedence"). Endpoint and
 * token are resolved independently, each through its own chain:
 *
 * | layer | endpoint                 | token                    |
 * | ----- | ------------------------ | ------------------------ |
 * | 1     | `--endpoint`             | `--token`                |
 * | 2     | `$OTHERIX_SERVER`        | `$OTHERIX_API_TOKEN`     |
 * | 3     | named cluster (`--cluster`) | named cluster         |
 * | 4     | current-cluster          | current-cluster          |
 * | 5     | fail: no endpoint configured | fail: no token configured |
 *
 * An endpoint value may list several URLs (control-plane replicas, issue 11): comma-separated
 * in `--endpoint` and `$OTHERIX_SERVER`, a string or list in the config's `server`.
 *
 * @module
 */
import { type CliConfig, type ClusterEntry, findCluster, notFound } from "./config_store.ts";
import { parseEndpoints } from "./endpoints.ts";
import { UsageError } from "./errors.ts";

export { normalizeEndpoint } from "./endpoints.ts";

/** Env var for the endpoint (layer 2). */
export const SERVER_ENV = "OTHERIX_SERVER";
/** Env var for the token (layer 2). */
export const TOKEN_ENV = "OTHERIX_API_TOKEN";

/** Where a resolved value came from. */
export type Source = "flag" | "env" | "cluster" | "current-cluster";

/** The outcome of resolution. */
export interface Target {
  /** The first of {@link endpoints} (for messages). */
  endpoint: string;
  /**
   * Base URLs without trailing slash, in the order given, e.g. `["http://127.0.0.1:8080"]`;
   * at least one.
   */
  endpoints: string[];
  /** Bearer token. */
  token: string;
  /** Which layer gave the endpoint. */
  endpointSource: Source;
  /** Which layer gave the token. */
  tokenSource: Source;
}

/** Inputs of {@link resolveTarget}. */
export interface TargetInputs {
  /** `--endpoint`, `--token`, `--cluster`. */
  flags: { endpoint?: string; token?: string; cluster?: string };
  /** Environment lookup (empty values must read as unset). */
  env: (name: string) => string | undefined;
  /**
   * Loads the config file; only called when a layer-3/4 lookup is needed (or `--cluster`
   * is given), so an unreadable config does not break fully flag/env-driven invocations.
   */
  loadConfig: () => Promise<CliConfig>;
  /** The config file path, for messages. */
  configPath: string;
}

/** True when the flags and env alone determine both values (no config file needed). */
function needsConfig(inputs: TargetInputs): boolean {
  const { flags, env } = inputs;
  if (flags.cluster) return true;
  return !(flags.endpoint || env(SERVER_ENV)) || !(flags.token || env(TOKEN_ENV));
}

/**
 * Resolves endpoint and token independently through the precedence table.
 *
 * @throws UsageError `no endpoint configured` / `no token configured`, an unknown `--cluster`,
 *   a dangling `current-cluster`, or an endpoint list with an entry that is not an http(s)
 *   URL
 */
export async function resolveTarget(inputs: TargetInputs): Promise<Target> {
  const { flags, env, configPath } = inputs;
  const config = needsConfig(inputs) ? await inputs.loadConfig() : undefined;

  let named: ClusterEntry | undefined;
  if (flags.cluster) {
    named = findCluster(config!, flags.cluster);
    if (!named) throw notFound(flags.cluster, configPath);
  }
  const currentName = config?.["current-cluster"];
  const current = currentName ? findCluster(config!, currentName) : undefined;
  const currentOrFail = () => {
    if (currentName && !current) {
      throw new UsageError(
        `current cluster "${currentName}" is not defined in ${configPath} ` +
          `(run 'otherix config use <name>')`,
      );
    }
    return current;
  };

  const pick = <F extends "server" | "token">(
    flag: string | undefined,
    envName: string,
    field: F,
  ): [ClusterEntry[F], Source] | undefined => {
    if (flag) return [flag, "flag"];
    const fromEnv = env(envName);
    if (fromEnv) return [fromEnv, "env"];
    if (named) return [named[field], "cluster"];
    const cur = currentOrFail();
    if (cur) return [cur[field], "current-cluster"];
    return undefined;
  };

  const endpoint = pick(flags.endpoint, SERVER_ENV, "server");
  if (!endpoint) {
    throw new UsageError(
      `no endpoint configured: pass --endpoint, set ${SERVER_ENV}, or add a cluster with ` +
        `'otherix config add cluster' (config: ${configPath})`,
    );
  }
  const token = pick(flags.token, TOKEN_ENV, "token");
  if (!token) {
    throw new UsageError(
      `no token configured: pass --token, set ${TOKEN_ENV}, or add a cluster with ` +
        `'otherix config add cluster' (config: ${configPath})`,
    );
  }
  const endpoints = parseEndpoints(endpoint[0]);
  return {
    endpoint: endpoints[0],
    endpoints,
    token: token[0],
    endpointSource: endpoint[1],
    tokenSource: token[1],
  };
}
