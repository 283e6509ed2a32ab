/**
 * The agent's calls to the control plane's agent-facing port (heartbeats, reports, certificate
 * renewal): JSON over mTLS with the node certificate, and the server must present a
 * control-plane certificate (O = `CP_CERT_ORG`) from the cluster CA for the URL's host, not
 * merely any cluster certificate (shared/tls.ts `requestTls`). {@link postToCpWithFailover}
 * calls the current URL of the agent's control-plane list (agent/cp_endpoints.ts) and moves to
 * the next replica on a connection-level failure; every URL gets the same verification.
 *
 * @module
 */
import { CP_CERT_ORG } from "../shared/constants.ts";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { type ClientTlsMaterial, keepAliveAgent, requestTls } from "../shared/tls.ts";
import type { Agent as HttpsAgent } from "node:https";
import type { AgentIdentity } from "./bootstrap.ts";
import type { CpEndpoints } from "./cp_endpoints.ts";

/**
 * The control plane answered with an HTTP error status: an answer, so no failover. The
 * message is `HTTP <status> <code>: <message>` (`HTTP <status>` without an error envelope).
 */
export class CpAnswerError extends Error {
  /**
   * @param status the HTTP status
   * @param code the envelope's stable error code (shared/errors.ts), null without one
   */
  constructor(message: string, readonly status: number, readonly code: string | null) {
    super(message);
    this.name = "CpAnswerError";
  }
}

/**
 * True when `e` (from {@link postToCp}) means the control plane did not answer: refused,
 * reset, DNS or TLS failure (a server that is not a control plane included), or the request
 * timeout — or it answered 503 `store_unavailable` (a replica cut off from the store's quorum:
 * another replica may have it). False for other HTTP error answers ({@link CpAnswerError})
 * and when `signal` (the caller's) was aborted.
 */
export function isConnectionFailure(e: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted) return false;
  return !(e instanceof CpAnswerError) || e.code === "store_unavailable";
}

/** True for the errors of reusing a connection the other side has just closed. */
function isStaleConnection(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  return code === "ECONNRESET" || code === "EPIPE" || /socket hang up/i.test(String(e));
}

/** The agent's mTLS client material from its identity. */
export function cpTls(identity: AgentIdentity): ClientTlsMaterial {
  return { caPem: identity.caPem, certPem: identity.certPem, keyPem: identity.keyPem };
}

/**
 * `POST {cpUrl}{path}` with `body` as JSON; resolves with the parsed JSON answer (null for an
 * empty body, e.g. 204).
 *
 * @param timeoutMs per-request timeout, ms
 * @param agent a keep-alive agent (shared/tls.ts keepAliveAgent) to reuse connections; a
 *   reused connection the server had just closed is retried once on a fresh one
 * @throws CpAnswerError for an HTTP error answer (`HTTP 404 not_found: …`); Error describing
 *   the transport failure, a server that is not a control plane, or a timeout
 */
export async function postToCp(
  cpUrl: string,
  path: string,
  body: unknown,
  tls: ClientTlsMaterial,
  timeoutMs: number,
  signal?: AbortSignal,
  agent?: HttpsAgent,
): Promise<unknown> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const send = (pooled?: HttpsAgent) =>
    requestTls(cpUrl.replace(/\/+$/, "") + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      tls,
      expect: { organization: CP_CERT_ORG },
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      agent: pooled,
    });
  let res: Response;
  try {
    res = await send(agent);
  } catch (e) {
    // A kept-alive connection the server closed just as it was reused: once more, fresh.
    if (!agent || !isStaleConnection(e)) throw e;
    res = await send(undefined);
  }
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const env = ErrorEnvelopeSchema.safeParse(json);
    throw new CpAnswerError(
      env.success
        ? `HTTP ${res.status} ${env.data.error.code}: ${env.data.error.message}`
        : `HTTP ${res.status}`,
      res.status,
      env.success ? env.data.error.code : null,
    );
  }
  return json;
}

/** Options of {@link postToCpWithFailover}. */
export interface FailoverPostOptions {
  /** Per-attempt timeout, ms. */
  timeoutMs: number;
  /** Prefix of the failover log lines (`heartbeat`, `report`, `renewal`). */
  component: string;
  signal?: AbortSignal;
  /**
   * The keep-alive agent to use for `url` (called before each attempt); omitted: a new
   * connection per request. The heartbeat keeps one agent for one URL at a time.
   */
  agentFor?: (url: string) => HttpsAgent | undefined;
}

/**
 * {@link postToCp} to `endpoints.current()`; on a connection-level failure
 * ({@link isConnectionFailure}) `endpoints.failed()` moves to the next replica and the request
 * is sent there at once, each known URL at most once per call. An answer (any HTTP status)
 * sticks to its URL (`endpoints.succeeded`).
 *
 * @returns the parsed JSON answer and the URL that gave it
 * @throws CpAnswerError for an HTTP error answer; the last transport error when no URL
 *   answered; the signal's reason when aborted; Error when no URL is known
 */
export async function postToCpWithFailover(
  endpoints: CpEndpoints,
  path: string,
  body: unknown,
  tls: ClientTlsMaterial,
  o: FailoverPostOptions,
): Promise<{ json: unknown; url: string }> {
  const tried = new Set<string>();
  let url = endpoints.current();
  let lastError: unknown;
  while (!tried.has(url)) {
    tried.add(url);
    try {
      const json = await postToCp(url, path, body, tls, o.timeoutMs, o.signal, o.agentFor?.(url));
      endpoints.succeeded(url, o.component);
      return { json, url };
    } catch (e) {
      if (!isConnectionFailure(e, o.signal)) {
        if (e instanceof CpAnswerError) endpoints.succeeded(url, o.component);
        throw e;
      }
      lastError = e;
      url = endpoints.failed(url, e, o.component);
    }
  }
  throw lastError;
}

/** One kept-alive connection to one control-plane URL at a time. */
export interface UrlConnection {
  /** The pool for `url`: the same one while the URL stays, a new one after a failover. */
  agentFor(url: string): HttpsAgent;
  /** The URL last asked for (null before the first request). */
  readonly url: string | null;
  /** Closes the pool and its socket. */
  close(): void;
}

/**
 * A kept-alive connection (pool of one socket) that follows the URL in use: the control
 * plane's agent port keeps idle connections for two heartbeat intervals plus 5 s, so a steady
 * agent does one TLS handshake per replica, not one per request. A failover to another URL
 * destroys the old pool, socket included (heartbeats and reports each hold one).
 */
export function urlConnection(): UrlConnection {
  let pool = keepAliveAgent(1);
  let url: string | null = null;
  return {
    agentFor(next: string) {
      if (url !== null && url !== next) {
        pool.destroy();
        pool = keepAliveAgent(1);
      }
      url = next;
      return pool;
    },
    get url() {
      return url;
    },
    close: () => pool.destroy(),
  };
}
