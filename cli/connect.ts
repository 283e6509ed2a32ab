/**
 * From the global options to an API client: resolves the endpoints and the token through the
 * precedence table (`resolve.ts`) and builds the {@link ApiClient}. Shared by the commander
 * commands (`common.ts` `connect`) and the start-up fast path (`fast_path.ts`); loads no
 * command-line library, and the config file (YAML) only when flags and env do not settle both
 * values.
 *
 * @module
 */
import { ApiClient } from "./client.ts";
import { loadConfig, resolveConfigPath } from "./config_store.ts";
import { sharedPicker } from "./endpoints.ts";
import type { Io } from "./io.ts";
import { resolveTarget } from "./resolve.ts";

/** Default `--request-timeout`, seconds. */
export const DEFAULT_REQUEST_TIMEOUT_SECONDS = 30;

/** Options defined on the root command, visible to every subcommand. */
export interface GlobalOptions {
  /** `--config <path>`. */
  config?: string;
  /** `--cluster <name>`. */
  cluster?: string;
  /** `--endpoint <url>[,<url>…]`. */
  endpoint?: string;
  /** `--token <token>`. */
  token?: string;
  /** `--request-timeout`, seconds. */
  requestTimeout: number;
}

/**
 * Resolves endpoints and token for the global options `g` (flags > env > named cluster >
 * current cluster) and returns a client for them; clients of the same endpoint list share
 * this process's try order (endpoints.ts `sharedPicker`).
 *
 * @throws UsageError when no endpoint or token is configured, the config is unreadable or
 *   invalid, or an endpoint is not an http(s) URL
 */
export async function connectWith(g: GlobalOptions, io: Io): Promise<ApiClient> {
  // Without HOME the default path is unknown; that only matters if the config is needed.
  let configPath = "~/.otherix/config";
  let pathError: unknown;
  try {
    configPath = resolveConfigPath(g.config, (n) => io.env(n));
  } catch (e) {
    pathError = e;
  }
  const target = await resolveTarget({
    flags: { endpoint: g.endpoint, token: g.token, cluster: g.cluster },
    env: (n) => io.env(n),
    loadConfig: () => pathError ? Promise.reject(pathError) : loadConfig(configPath),
    configPath,
  });
  return new ApiClient({
    endpoint: target.endpoints,
    picker: sharedPicker(target.endpoints),
    token: target.token,
    timeoutMs: g.requestTimeout * 1000,
    fetch: io.fetch,
  });
}
