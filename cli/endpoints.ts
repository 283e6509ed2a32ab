/**
 * Several API endpoints for one cluster (issue 11: control-plane replicas serve the same API):
 * parsing the comma-separated lists of `--endpoint`, `$OTHERIX_SERVER` and the config's
 * `server`, and the order in which {@link ApiClient} tries them.
 *
 * The rule ({@link EndpointPicker}): endpoints are tried in list order, starting with the one
 * that last answered (remembered by this process only, never written anywhere); a request
 * moves on to the next after a connection-level failure and never after an HTTP answer. Which
 * failures allow re-sending which requests is the client's rule (`client.ts`).
 *
 * @module
 */
import { UsageError } from "./errors.ts";

/**
 * Validates an http(s) base URL and strips trailing slashes.
 *
 * @throws UsageError when `url` is not an http(s) URL
 */
export function normalizeEndpoint(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`invalid endpoint "${url}": must be an http(s) URL`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new UsageError(`invalid endpoint "${url}": must be an http(s) URL`);
  }
  return url.replace(/\/+$/, "");
}

/**
 * Parses an endpoint list: a string of comma-separated URLs (`http://a:8080,http://b:8080`;
 * blanks around commas are ignored) or an array of them, each normalized by
 * {@link normalizeEndpoint}; a URL listed twice is kept once (first place).
 *
 * @returns at least one endpoint, in the given order
 * @throws UsageError for an empty list, an empty entry (`a,,b`) or an invalid URL
 */
export function parseEndpoints(value: string | readonly string[]): string[] {
  const parts = typeof value === "string" ? value.split(",") : [...value];
  const shown = typeof value === "string" ? value : value.join(",");
  const out: string[] = [];
  for (const raw of parts) {
    const part = raw.trim();
    if (part === "") {
      throw new UsageError(
        `invalid endpoint list "${shown}": empty entry (separate URLs with single commas)`,
      );
    }
    const url = normalizeEndpoint(part);
    if (!out.includes(url)) out.push(url);
  }
  if (out.length === 0) throw new UsageError("invalid endpoint list: no URL given");
  return out;
}

/**
 * The order in which one cluster's endpoints are tried. Starts with the first endpoint;
 * {@link answered} makes an endpoint the preferred one, {@link failed} moves the preference
 * past an endpoint that stopped answering (an event stream that broke), so the next attempt
 * starts with the endpoint after it.
 */
export class EndpointPicker {
  /** The endpoints in list order (normalized, at least one). */
  readonly endpoints: readonly string[];
  #preferred = 0;

  /** @throws UsageError for an empty list */
  constructor(endpoints: readonly string[]) {
    if (endpoints.length === 0) throw new UsageError("invalid endpoint list: no URL given");
    this.endpoints = [...endpoints];
  }

  /** The endpoint tried first: the last that answered, else the first in the list. */
  get current(): string {
    return this.endpoints[this.#preferred];
  }

  /**
   * Every endpoint once, in try order: {@link current} first, then the ones after it in list
   * order, wrapping around (`[a, b, c]` with `b` preferred → `[b, c, a]`).
   */
  order(): string[] {
    const n = this.endpoints.length;
    return Array.from({ length: n }, (_, i) => this.endpoints[(this.#preferred + i) % n]);
  }

  /** `endpoint` answered (any HTTP status): it is tried first from now on. */
  answered(endpoint: string): void {
    const i = this.endpoints.indexOf(endpoint);
    if (i >= 0) this.#preferred = i;
  }

  /**
   * `endpoint` failed at the connection level: if it is the preferred one, the next in the
   * list becomes preferred (others keep their place).
   */
  failed(endpoint: string): void {
    if (this.endpoints[this.#preferred] === endpoint) {
      this.#preferred = (this.#preferred + 1) % this.endpoints.length;
    }
  }
}

const pickers = new Map<string, EndpointPicker>();

/**
 * The process-wide picker of an endpoint list (one per distinct list), so every client this
 * process builds for the same cluster starts with the endpoint that last answered. Nothing is
 * persisted: a new process starts with the first endpoint again.
 */
export function sharedPicker(endpoints: readonly string[]): EndpointPicker {
  const key = endpoints.join("\n");
  let picker = pickers.get(key);
  if (!picker) pickers.set(key, picker = new EndpointPicker(endpoints));
  return picker;
}
