/**
 * A small etcd v3 client over etcd's JSON gRPC gateway (`POST <endpoint>/v3/<service>/<method>`
 * with the protobuf messages as JSON: bytes base64, int64 as decimal strings), on Deno's
 * `fetch` with a `Deno.createHttpClient` for TLS (CA and client certificate, HTTP/2 when the
 * server offers it). Used by the etcd store backend (`etcd.ts`).
 *
 * Why not `npm:etcd3` (gRPC via `@grpc/grpc-js`): under Deno 2.9 grpc-js cannot reach an etcd
 * endpoint given by IP address over TLS — grpc-js always passes the target host as the TLS
 * `servername`, and Deno's `node:tls` throws `ERR_INVALID_ARG_VALUE` ("options.servername must
 * not be an IP address") where Node only warns (DEP0123); etcd members are normally addressed
 * by IP. Its watch layer also moves a watcher's resume revision to the response header's
 * revision (lossy when a catch-up batch is cut or the stream drops while replaying history) and
 * drops `compact_revision` from a compaction cancel, so the store would bypass it anyway.
 *
 * Failures: a transport failure (refused, reset, TLS refused, timeout) or etcd answering
 * "unavailable" (no leader, request timed out) is `ApiError("store_unavailable")`, after trying
 * the other endpoints when that is safe (the request never left, or it is `idempotent`); any
 * other etcd refusal is an {@link EtcdRpcError} with the gRPC code and etcd's message.
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";
import { StoreError } from "./store.ts";

/** TLS material for etcd connections, PEM text. */
export interface EtcdTls {
  /** CA certificate(s) that signed the etcd servers' certificates. */
  caPem: string;
  /** Client certificate (etcd `--client-cert-auth`), with `keyPem`. */
  certPem?: string;
  /** The client certificate's private key. */
  keyPem?: string;
}

/** Options of {@link EtcdClient}. */
export interface EtcdClientOptions {
  /** Client URLs of the members, e.g. `https://10.0.0.5:2379` (tried in turn on failure). */
  endpoints: string[];
  /** TLS material; required for `https` endpoints unless the system roots suffice. */
  tls?: EtcdTls | null;
  /** Connecting plus etcd's answer headers, per endpoint, ms (default 5000). */
  dialTimeoutMs?: number;
  /** A whole unary call, ms (default 15000). */
  requestTimeoutMs?: number;
}

/** Default of {@link EtcdClientOptions.dialTimeoutMs}. */
export const DEFAULT_DIAL_TIMEOUT_MS = 5000;
/** Default of {@link EtcdClientOptions.requestTimeoutMs}. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;

/** gRPC status codes etcd answers with (google.golang.org/grpc/codes). */
export const GrpcCode = {
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  OutOfRange: 11,
  Unavailable: 14,
} as const;

/** etcd refused a request: gRPC `code` and etcd's `message` (e.g. "etcdserver: …"). */
export class EtcdRpcError extends Error {
  /** The gRPC status code. */
  readonly code: number;
  /** `message` as etcd wrote it. */
  constructor(code: number, message: string) {
    super(message);
    this.name = "EtcdRpcError";
    this.code = code;
  }
}

/** Options of one call. */
export interface CallOptions {
  /** Safe to send again (to another endpoint) when the outcome is unknown: reads, revokes. */
  idempotent?: boolean;
}

type Json = Record<string, unknown>;

/** A transport failure; `sent` is false when the request certainly never reached etcd. */
class TransportFailure extends Error {
  constructor(readonly endpoint: string, readonly sent: boolean, cause: unknown) {
    super(describe(cause), { cause });
  }
}

/**
 * The etcd JSON-gateway client (see the module doc). One instance per store handle; its HTTP
 * client (connection pool) is released by {@link EtcdClient.close}.
 */
export class EtcdClient {
  readonly #endpoints: string[];
  /** Unary calls: HTTP/1.1 keep-alive connections (see the constructor). */
  readonly #unary: Deno.HttpClient;
  /** Streams (watches, keep-alives): HTTP/2 where offered, multiplexed on one connection. */
  readonly #streams: Deno.HttpClient;
  readonly #dialMs: number;
  readonly #requestMs: number;
  /** Index of the endpoint that answered last (tried first). */
  #current = 0;
  #closed = false;

  /** @throws StoreError for malformed endpoints, TLS material or timeouts */
  constructor(opts: EtcdClientOptions) {
    if (!opts.endpoints.length) throw new StoreError("etcd: no endpoints given");
    this.#endpoints = opts.endpoints.map((e) => checkEndpoint(e, !!opts.tls));
    for (
      const [name, v] of [["dialTimeoutMs", opts.dialTimeoutMs], [
        "requestTimeoutMs",
        opts.requestTimeoutMs,
      ]] as const
    ) {
      if (v !== undefined && !(Number.isInteger(v) && v >= 1)) {
        throw new StoreError(`etcd option ${name} must be an integer >= 1, got ${v}`);
      }
    }
    this.#dialMs = opts.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
    this.#requestMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const tls = opts.tls;
    if (tls && !!tls.certPem !== !!tls.keyPem) {
      throw new StoreError("etcd TLS: a client certificate and its key go together");
    }
    const material = {
      ...(tls ? { caCerts: [tls.caPem] } : {}),
      ...(tls?.certPem ? { cert: tls.certPem, key: tls.keyPem! } : {}),
    };
    try {
      // Unary answers over HTTP/2 stall ~40 ms now and then (a 100-key range: p99 ~50 ms
      // against ~12 ms over HTTP/1.1, measured against etcd 3.4 here), so unary calls use
      // HTTP/1.1 connections; long-lived streams share one HTTP/2 connection.
      this.#unary = Deno.createHttpClient({ ...material, http2: false });
      this.#streams = Deno.createHttpClient(material);
    } catch (e) {
      throw new StoreError(`etcd TLS material refused: ${(e as Error).message}`);
    }
  }

  /** The endpoints, in configuration order. */
  get endpoints(): readonly string[] {
    return this.#endpoints;
  }

  /**
   * A unary call: `POST /v3/<path>` with `body`, parsed JSON answer.
   *
   * @throws ApiError `store_unavailable` when no endpoint answers (see the module doc)
   * @throws EtcdRpcError when etcd refuses the request
   */
  async call<T = Json>(path: string, body: Json, opts: CallOptions = {}): Promise<T> {
    const res = await this.#send(path, body, opts.idempotent ?? false, this.#requestMs);
    try {
      return await res.json() as T;
    } catch (e) {
      throw unavailable(`etcd ${path}: reading the answer failed`, e);
    }
  }

  /**
   * A server-streaming call (watch, lease keep-alive): `POST /v3/<path>` with `body`, then
   * each `result` message of the answer stream as it arrives. Aborting `signal` (or leaving
   * the loop) closes the stream. Opening is tried on every endpoint (the calls streamed here
   * are safe to repeat).
   *
   * @throws ApiError `store_unavailable` when no endpoint answers, or the stream breaks
   * @throws EtcdRpcError when etcd refuses the request or ends the stream with an error
   */
  async *stream(path: string, body: Json, signal: AbortSignal): AsyncGenerator<Json> {
    const res = await this.#send(path, body, true, null, signal);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<string>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (signal.aborted) return;
          throw unavailable(`etcd ${path}: stream broken`, e);
        }
        if (chunk.done) {
          if (signal.aborted) return;
          throw unavailable(`etcd ${path}: stream ended by the server`, null);
        }
        // Scan only the new text for line ends (a large message arrives in many chunks).
        let from = buf.length;
        buf += chunk.value;
        let nl: number;
        while ((nl = buf.indexOf("\n", from)) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          from = 0;
          if (!line) continue;
          const msg = JSON.parse(line) as { result?: Json; error?: Json };
          if (msg.error) throw rpcErrorOf(msg.error);
          if (msg.result) yield msg.result;
        }
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
  }

  /** Releases the connection pool; later calls fail with `store_unavailable`. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unary.close();
    this.#streams.close();
  }

  /**
   * Sends one request, trying the endpoints from the last good one on; returns a 200 answer.
   * `totalMs` bounds the whole exchange including the body (null: only `signal` ends it).
   */
  async #send(
    path: string,
    body: Json,
    idempotent: boolean,
    totalMs: number | null,
    signal?: AbortSignal,
  ): Promise<Response> {
    if (this.#closed) throw new ApiError("store_unavailable", "etcd client is closed");
    const text = JSON.stringify(body);
    let last: TransportFailure | null = null;
    let lastRpc: EtcdRpcError | null = null;
    const n = this.#endpoints.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.#current + i) % n;
      try {
        const res = await this.#attempt(this.#endpoints[idx], path, text, totalMs, signal);
        this.#current = idx;
        if (res.ok) return res;
        throw await rpcErrorOfResponse(res);
      } catch (e) {
        if (e instanceof EtcdRpcError) {
          // "No leader" and friends: another member may do better, for calls safe to repeat.
          if (e.code === GrpcCode.Unavailable && idempotent && i < n - 1) {
            lastRpc = e;
            continue;
          }
          if (e.code === GrpcCode.Unavailable || e.code === GrpcCode.DeadlineExceeded) {
            throw new ApiError("store_unavailable", `etcd ${path}: ${e.message}`, {
              endpoint: this.#endpoints[idx],
            });
          }
          throw e;
        }
        if (!(e instanceof TransportFailure)) throw e;
        if (signal?.aborted) throw e;
        last = e;
        if (e.sent && !idempotent) break; // the outcome is unknown: never send it twice
      }
    }
    if (!last) throw unavailable(`etcd ${path}`, lastRpc);
    throw unavailable(`etcd ${path}: no endpoint answered (${last.endpoint})`, last.cause);
  }

  /** One HTTP exchange with `endpoint`; transport failures become {@link TransportFailure}. */
  async #attempt(
    endpoint: string,
    path: string,
    text: string,
    totalMs: number | null,
    signal?: AbortSignal,
  ): Promise<Response> {
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let streaming = false;
    let timedOut: string | null = null;
    const dial = setTimeout(() => {
      timedOut = `no answer within ${this.#dialMs} ms`;
      ctrl.abort();
    }, this.#dialMs);
    const total = totalMs === null ? undefined : setTimeout(() => {
      timedOut = `not done within ${totalMs} ms`;
      ctrl.abort();
    }, totalMs);
    try {
      const res = await fetch(`${endpoint}/v3/${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: text,
        client: totalMs === null ? this.#streams : this.#unary,
        signal: ctrl.signal,
      });
      clearTimeout(dial);
      if (total === undefined) {
        streaming = true; // `signal` must still abort the body being read
        return res;
      }
      // Buffer the body under the total timer, then hand back a plain Response.
      const bytes = await res.arrayBuffer();
      return new Response(bytes, { status: res.status, headers: res.headers });
    } catch (e) {
      if (signal?.aborted) throw new TransportFailure(endpoint, true, signal.reason ?? e);
      const cause = timedOut ? new Error(timedOut) : e;
      throw new TransportFailure(endpoint, timedOut !== null || !notSent(e), cause);
    } finally {
      clearTimeout(dial);
      if (total !== undefined) clearTimeout(total);
      if (!streaming) signal?.removeEventListener("abort", onAbort);
    }
  }
}

/** An error's message with its causes' (Deno's fetch says "fetch failed", the cause why). */
function describe(e: unknown): string {
  const parts: string[] = [];
  for (let cur = e, depth = 0; cur && depth < 4; depth++) {
    parts.push(String((cur as Error).message ?? cur));
    cur = (cur as Error).cause;
  }
  return parts.join(": ");
}

/** True when a fetch failure happened before the request could reach the server. */
function notSent(e: unknown): boolean {
  return /client error \(Connect\)|tcp connect error|dns error|Connection refused/i.test(
    describe(e),
  );
}

function unavailable(message: string, cause: unknown): ApiError {
  return new ApiError("store_unavailable", cause ? `${message}: ${describe(cause)}` : message);
}

/** Normalizes an endpoint URL (`https://host:port`, no path). */
function checkEndpoint(raw: string, tls: boolean): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new StoreError(`etcd endpoint ${JSON.stringify(raw)} is not a URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new StoreError(`etcd endpoint ${raw}: expected https:// (or http://)`);
  }
  if (url.protocol === "http:" && tls) {
    throw new StoreError(`etcd endpoint ${raw}: TLS material given for a plain-HTTP endpoint`);
  }
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.username) {
    throw new StoreError(`etcd endpoint ${raw}: expected scheme://host:port only`);
  }
  return `${url.protocol}//${url.host}`;
}

function rpcErrorOf(err: Json): EtcdRpcError {
  const code = Number(err.grpc_code ?? err.code ?? 2);
  const message = String(err.message ?? err.error ?? "unknown etcd error");
  return new EtcdRpcError(code, message);
}

async function rpcErrorOfResponse(res: Response): Promise<EtcdRpcError> {
  const text = await res.text().catch(() => "");
  try {
    return rpcErrorOf(JSON.parse(text) as Json);
  } catch {
    return new EtcdRpcError(
      res.status === 503 ? GrpcCode.Unavailable : 2,
      `HTTP ${res.status}: ${text.slice(0, 200)}`,
    );
  }
}
