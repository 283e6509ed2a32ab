/**
 * The HTTP client of the public API. Every response is validated with the shared zod schema;
 * failures become {@link ApiCallError} (an error envelope) or {@link TransportError}
 * (`request_timeout`, `connection_refused`, `request_failed`).
 *
 * @module
 */
import { z } from "zod";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { listOf } from "../shared/api/common.ts";
import { ApiCallError, TransportError } from "./errors.ts";
import { formatDuration } from "./duration.ts";

/** Options of {@link ApiClient}. */
export interface ApiClientOptions {
  /** Base URL without trailing slash. */
  endpoint: string;
  /** Bearer token; omitted for unauthenticated calls (login). */
  token?: string;
  /** Per-request timeout (connect + headers + body), milliseconds. */
  timeoutMs: number;
  /** The `fetch` to use (defaults to the global one). */
  fetch?: typeof fetch;
}

/** A validated JSON response: the parsed value and the raw body (for `-o json|yaml`). */
export interface JsonResult<T> {
  /** The schema-parsed body. */
  data: T;
  /** The body as received (unknown fields kept). */
  raw: unknown;
  /** HTTP status. */
  status: number;
}

/** Request options. */
export interface RequestOptions {
  /** JSON body. */
  body?: unknown;
  /** Query parameters; `undefined` values are skipped. */
  query?: Record<string, string | number | undefined>;
  /** Overrides the client's token for this call (e.g. a freshly obtained JWT). */
  token?: string;
}

const SNIPPET = 200;

/** Client of the `otherix-api` public REST API. */
export class ApiClient {
  readonly endpoint: string;
  readonly #token?: string;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor(options: ApiClientOptions) {
    this.endpoint = options.endpoint.replace(/\/+$/, "");
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
  }

  /**
   * Sends a request and validates the JSON answer with `schema`.
   *
   * @throws ApiCallError for an error envelope; TransportError otherwise
   */
  async json<S extends z.ZodType>(
    method: string,
    path: string,
    schema: S,
    options: RequestOptions = {},
  ): Promise<JsonResult<z.infer<S>>> {
    const { status, text, contentType } = await this.#send(
      method,
      path,
      options,
      "application/json",
    );
    const what = `${method} ${path}`;
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new TransportError(
        "request_failed",
        `unexpected response from ${what}: HTTP ${status} body is not JSON` +
          ` (content-type ${contentType || "none"}): ${snippet(text)}`,
      );
    }
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      const why = parsed.error.issues
        .slice(0, 3)
        .map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`)
        .join("; ");
      throw new TransportError("request_failed", `unexpected response from ${what}: ${why}`);
    }
    return { data: parsed.data, raw, status };
  }

  /**
   * Sends a request and returns the body as text (e.g. the console log).
   *
   * @throws ApiCallError for an error envelope; TransportError otherwise
   */
  async text(method: string, path: string, options: RequestOptions = {}): Promise<string> {
    return (await this.#send(method, path, options, "text/plain")).text;
  }

  /**
   * Fetches every page of a cursor-paginated list (`{items, next_cursor}`), following
   * `next_cursor` until it is null.
   *
   * @returns all items, and the raw items for `-o json|yaml`
   */
  async listAll<S extends z.ZodType>(
    path: string,
    item: S,
    query: Record<string, string | number | undefined> = {},
  ): Promise<{ items: z.infer<S>[]; raw: unknown[] }> {
    const schema = listOf(item);
    const items: z.infer<S>[] = [];
    const raw: unknown[] = [];
    const seen = new Set<string>();
    let cursor: string | undefined;
    for (;;) {
      const page = await this.json("GET", path, schema, { query: { ...query, cursor } });
      items.push(...page.data.items);
      raw.push(...(page.raw as { items: unknown[] }).items);
      const next = page.data.next_cursor;
      if (next === null || next === "") break;
      if (seen.has(next)) {
        throw new TransportError(
          "request_failed",
          `unexpected response from GET ${path}: next_cursor repeats (${snippet(next)})`,
        );
      }
      seen.add(next);
      cursor = next;
    }
    return { items, raw };
  }

  /**
   * Opens a Server-Sent Events stream (`GET path`, `Accept: text/event-stream`). The request
   * timeout covers the connection and the response headers only: the body streams until the
   * server ends it or `signal` aborts.
   *
   * @returns the response body (bytes of the event stream)
   * @throws ApiCallError for an error envelope (e.g. 404 `not_found` from a server without the
   *   endpoint, 410 `revision_compacted`); TransportError otherwise, also for a 2xx answer
   *   that is not `text/event-stream`
   */
  async stream(
    path: string,
    options: RequestOptions & { signal?: AbortSignal; headers?: Record<string, string> } = {},
  ): Promise<ReadableStream<Uint8Array>> {
    const res = await this.#request("GET", path, options, "text/event-stream");
    const contentType = res.headers.get("content-type") ?? "";
    if (!/^text\/event-stream\b/i.test(contentType) || !res.body) {
      const text = await res.text().catch(() => "");
      throw new TransportError(
        "request_failed",
        `unexpected response from GET ${path}: HTTP ${res.status} is not an event stream` +
          ` (content-type ${contentType || "none"}): ${snippet(text) || "(empty body)"}`,
      );
    }
    return res.body;
  }

  async #send(
    method: string,
    path: string,
    options: RequestOptions,
    accept: string,
  ): Promise<{ status: number; text: string; contentType: string }> {
    const signal = AbortSignal.timeout(this.#timeoutMs);
    const res = await this.#request(method, path, options, accept, signal);
    try {
      return {
        status: res.status,
        text: await res.text(),
        contentType: res.headers.get("content-type") ?? "",
      };
    } catch (e) {
      throw this.#transportError(e, `${method} ${new URL(this.endpoint + path).pathname}`);
    }
  }

  /**
   * Sends a request; returns the response when it is 2xx (body unread). Without `bodySignal`
   * the request timeout covers the connection and headers only.
   */
  async #request(
    method: string,
    path: string,
    options: RequestOptions & { signal?: AbortSignal; headers?: Record<string, string> },
    accept: string,
    bodySignal?: AbortSignal,
  ): Promise<Response> {
    const url = new URL(this.endpoint + path);
    for (const [k, v] of Object.entries(options.query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = {
      Accept: accept,
      "User-Agent": "otherix-cli",
      ...options.headers,
    };
    const token = options.token ?? this.#token;
    if (token) headers.Authorization = `Bearer ${token}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const what = `${method} ${url.pathname}`;
    const timeout = bodySignal ?? AbortSignal.timeout(this.#timeoutMs);
    // Headers must arrive before the timeout; a streamed body may outlive it (no bodySignal).
    const headersDeadline = new AbortController();
    const onTimeout = () => headersDeadline.abort(timeout.reason);
    timeout.addEventListener("abort", onTimeout);
    const signals = [bodySignal ?? headersDeadline.signal];
    if (options.signal) signals.push(options.signal);
    let res: Response;
    try {
      res = await this.#fetch(url, { method, headers, body, signal: AbortSignal.any(signals) });
    } catch (e) {
      throw this.#transportError(e, what);
    } finally {
      if (!bodySignal) timeout.removeEventListener("abort", onTimeout);
    }
    if (res.status >= 200 && res.status < 300) return res;
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      throw this.#transportError(e, what);
    }
    let envelope: z.infer<typeof ErrorEnvelopeSchema> | undefined;
    try {
      const parsed = ErrorEnvelopeSchema.safeParse(JSON.parse(text));
      if (parsed.success) envelope = parsed.data;
    } catch {
      // not JSON: reported below
    }
    if (envelope) {
      const { code, message, details } = envelope.error;
      throw new ApiCallError(code, message, details, res.status);
    }
    throw new TransportError(
      "request_failed",
      `unexpected response from ${what}: HTTP ${res.status}: ${snippet(text) || "(empty body)"}`,
    );
  }

  #transportError(e: unknown, what: string): TransportError {
    const target = `${this.endpoint} (${what})`;
    if (e instanceof DOMException && e.name === "TimeoutError") {
      return new TransportError(
        "request_timeout",
        `no response from ${target} within ${timeoutText(this.#timeoutMs)}` +
          ` (see --request-timeout)`,
        { cause: e },
      );
    }
    if (isConnectionRefused(e)) {
      return new TransportError(
        "connection_refused",
        `cannot connect to ${target}: connection refused (is otherix-api running?)`,
        { cause: e },
      );
    }
    return new TransportError(
      "request_failed",
      `${what} to ${this.endpoint} failed: ${describe(e)}`,
      {
        cause: e,
      },
    );
  }
}

/** True when `e` (or its cause chain) is a refused TCP connection. */
export function isConnectionRefused(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 5; depth++) {
    if (cur instanceof Deno.errors.ConnectionRefused) return true;
    const msg = cur instanceof Error ? cur.message : String(cur);
    if (/connection refused|ECONNREFUSED|os error 111\b/i.test(msg)) return true;
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return false;
}

/** The innermost useful message of an error chain. */
function describe(e: unknown): string {
  let cur: unknown = e;
  while (cur instanceof Error && cur.cause instanceof Error) cur = cur.cause;
  return cur instanceof Error ? cur.message : String(cur);
}

function timeoutText(ms: number): string {
  return ms % 1000 === 0 ? formatDuration(ms / 1000) : `${ms / 1000}s`;
}

function snippet(text: string): string {
  const t = text.trim().replace(/\s+/g, " ");
  return t.length > SNIPPET ? `${t.slice(0, SNIPPET)}…` : t;
}
