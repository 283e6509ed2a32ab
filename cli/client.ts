/**
 * The HTTP client of the public API. Every response is validated with a schema: a shared zod
 * schema, or on the start-up path a generated JSON Schema (`wire_schemas.ts`); failures become
 * {@link ApiCallError} (an error envelope) or {@link TransportError} (`request_timeout`,
 * `connection_refused`, `request_failed`). This module loads no zod itself (start-up, issue 10).
 *
 * Several endpoints (issue 11): the client tries them in the order of its
 * {@link EndpointPicker} (the one that last answered first) and moves to the next after a
 * connection-level failure, never after an HTTP answer (a 4xx/5xx is the answer):
 * - the connection was never opened (refused, DNS, TLS handshake; Deno's fetch reports
 *   `client error (Connect)`): any request moves on;
 * - the request may have reached a server (reset or closed connection, no response headers
 *   within the timeout): only safe requests (`GET`, `HEAD`, `OPTIONS`) move on; a `POST`,
 *   `PATCH`, `PUT` or `DELETE` fails, as it may have taken effect.
 * The request timeout applies to each endpoint tried.
 *
 * @module
 */
import { ErrorEnvelopeWire } from "./wire_schemas.ts";
import { type EndpointPicker, sharedPicker } from "./endpoints.ts";
import { ApiCallError, TransportError } from "./errors.ts";
import { formatDuration } from "./duration.ts";

/** One validation problem: where (`["items", 0, "name"]`) and what. */
export interface ResponseIssue {
  path: readonly PropertyKey[];
  message: string;
}

/** The outcome of {@link ResponseSchema.safeParse} (zod's `safeParse` result has this shape). */
export type SafeParseResult<T> =
  | { success: true; data: T }
  | { success: false; error: { issues: readonly ResponseIssue[] } };

/** What validates a response body: a zod schema, or a `wire_schemas.ts` validator. */
export interface ResponseSchema<T> {
  safeParse(raw: unknown): SafeParseResult<T>;
}

/** Options of {@link ApiClient}. */
export interface ApiClientOptions {
  /**
   * Base URL without trailing slash, or several (replicas of one cluster, tried in order;
   * see the module doc). Ignored when `picker` is given.
   */
  endpoint: string | readonly string[];
  /**
   * Shares the try order with other clients (default: the process-wide picker of the list,
   * endpoints.ts `sharedPicker`).
   */
  picker?: EndpointPicker;
  /** Bearer token; omitted for unauthenticated calls (login). */
  token?: string;
  /** Per-request timeout (connect + headers + body), milliseconds, per endpoint tried. */
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

/** An open event stream and the endpoint serving it. */
export interface OpenStream {
  /** The response body (bytes of the event stream). */
  body: ReadableStream<Uint8Array>;
  /** The endpoint that answered. */
  endpoint: string;
}

/** Methods that may be re-sent to another endpoint after the request may have arrived. */
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

const SNIPPET = 200;

/** Client of the `otherix-api` public REST API. */
export class ApiClient {
  readonly #picker: EndpointPicker;
  readonly #token?: string;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor(options: ApiClientOptions) {
    const list = typeof options.endpoint === "string" ? [options.endpoint] : options.endpoint;
    this.#picker = options.picker ?? sharedPicker(list.map((e) => e.replace(/\/+$/, "")));
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
  }

  /** The endpoint requests go to first: the one that last answered (else the first). */
  get endpoint(): string {
    return this.#picker.current;
  }

  /** Every endpoint, in list order. */
  get endpoints(): readonly string[] {
    return this.#picker.endpoints;
  }

  /**
   * Notes that `endpoint` stopped answering (an event stream broke): the next request starts
   * with the endpoint after it.
   */
  endpointFailed(endpoint: string): void {
    this.#picker.failed(endpoint);
  }

  /**
   * Sends a request and validates the JSON answer with `schema`.
   *
   * @throws ApiCallError for an error envelope; TransportError otherwise
   */
  async json<T>(
    method: string,
    path: string,
    schema: ResponseSchema<T>,
    options: RequestOptions = {},
  ): Promise<JsonResult<T>> {
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
    return { data: validated(schema, raw, what), raw, status };
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
   * `next_cursor` until it is null; each item is validated with `item` (issues are reported
   * at `items.<i>.…` of the page).
   *
   * @returns all items, and the raw items for `-o json|yaml`
   * @throws ApiCallError / TransportError as {@link json}; TransportError also for a page that
   *   is not `{items: [], next_cursor: string|null}` or a repeating cursor
   */
  async listAll<T>(
    path: string,
    item: ResponseSchema<T>,
    query: Record<string, string | number | undefined> = {},
  ): Promise<{ items: T[]; raw: unknown[] }> {
    const items: T[] = [];
    const raw: unknown[] = [];
    const seen = new Set<string>();
    let cursor: string | undefined;
    for (;;) {
      const page = await this.json("GET", path, PAGE, { query: { ...query, cursor } });
      page.data.items.forEach((it, i) => {
        items.push(validated(item, it, `GET ${path}`, ["items", i]));
        raw.push(it);
      });
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
   * server ends it or `signal` aborts. When the stream later breaks, report it with
   * {@link endpointFailed} so the reconnection tries the next endpoint.
   *
   * @returns the response body and the endpoint serving it
   * @throws ApiCallError for an error envelope (e.g. 404 `not_found` from a server without the
   *   endpoint, 410 `revision_compacted`); TransportError otherwise, also for a 2xx answer
   *   that is not `text/event-stream`
   */
  async stream(
    path: string,
    options: RequestOptions & { signal?: AbortSignal; headers?: Record<string, string> } = {},
  ): Promise<OpenStream> {
    const { res, endpoint } = await this.#request("GET", path, options, "text/event-stream");
    const contentType = res.headers.get("content-type") ?? "";
    if (!/^text\/event-stream\b/i.test(contentType) || !res.body) {
      const text = await res.text().catch(() => "");
      throw new TransportError(
        "request_failed",
        `unexpected response from GET ${path}: HTTP ${res.status} is not an event stream` +
          ` (content-type ${contentType || "none"}): ${snippet(text) || "(empty body)"}`,
      );
    }
    return { body: res.body, endpoint };
  }

  async #send(
    method: string,
    path: string,
    options: RequestOptions,
    accept: string,
  ): Promise<{ status: number; text: string; contentType: string }> {
    const { res, endpoint } = await this.#request(method, path, options, accept, true);
    try {
      return {
        status: res.status,
        text: await res.text(),
        contentType: res.headers.get("content-type") ?? "",
      };
    } catch (e) {
      throw this.#transportError(e, `${method} ${new URL(endpoint + path).pathname}`, endpoint);
    }
  }

  /**
   * Sends a request to the endpoints in try order (see the module doc); returns the first
   * 2xx response (body unread) with its endpoint. With `coverBody` the timeout also covers
   * reading the body; without, only the connection and the headers.
   */
  async #request(
    method: string,
    path: string,
    options: RequestOptions & { signal?: AbortSignal; headers?: Record<string, string> },
    accept: string,
    coverBody = false,
  ): Promise<{ res: Response; endpoint: string }> {
    const failures: TransportError[] = [];
    const order = this.#picker.order();
    for (const [i, endpoint] of order.entries()) {
      let res: Response;
      try {
        res = await this.#attempt(endpoint, method, path, options, accept, coverBody);
      } catch (e) {
        if (!(e instanceof AttemptFailed)) throw e;
        failures.push(e.error);
        const last = i === order.length - 1;
        if (last || !(e.neverConnected || SAFE_METHODS.has(method))) {
          throw combined(failures);
        }
        continue;
      }
      this.#picker.answered(endpoint);
      if (res.status >= 200 && res.status < 300) return { res, endpoint };
      const what = `${method} ${new URL(endpoint + path).pathname}`;
      throw await this.#answerError(res, what, endpoint);
    }
    throw combined(failures); // unreachable: the picker has at least one endpoint
  }

  /** One try against `endpoint`: the response, or {@link AttemptFailed}. */
  async #attempt(
    endpoint: string,
    method: string,
    path: string,
    options: RequestOptions & { signal?: AbortSignal; headers?: Record<string, string> },
    accept: string,
    coverBody: boolean,
  ): Promise<Response> {
    const url = new URL(endpoint + path);
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
    const timeout = AbortSignal.timeout(this.#timeoutMs);
    // Headers must arrive before the timeout; a streamed body may outlive it (!coverBody).
    const headersDeadline = new AbortController();
    const onTimeout = () => headersDeadline.abort(timeout.reason);
    if (!coverBody) timeout.addEventListener("abort", onTimeout);
    const signals = [coverBody ? timeout : headersDeadline.signal];
    if (options.signal) signals.push(options.signal);
    try {
      return await this.#fetch(url, { method, headers, body, signal: AbortSignal.any(signals) });
    } catch (e) {
      const error = this.#transportError(e, what, endpoint);
      if (options.signal?.aborted) throw error; // the caller stopped: no failover
      throw new AttemptFailed(error, neverConnected(e));
    } finally {
      if (!coverBody) timeout.removeEventListener("abort", onTimeout);
    }
  }

  /** The error for a non-2xx answer: its envelope as ApiCallError, else request_failed. */
  async #answerError(res: Response, what: string, endpoint: string): Promise<Error> {
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      return this.#transportError(e, what, endpoint);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: reported below
    }
    const envelope = parsed === undefined ? undefined : ErrorEnvelopeWire.safeParse(parsed);
    if (envelope?.success) {
      const { code, message, details } = envelope.data.error;
      return new ApiCallError(code, message, details, res.status);
    }
    return new TransportError(
      "request_failed",
      `unexpected response from ${what}: HTTP ${res.status}: ${snippet(text) || "(empty body)"}`,
    );
  }

  #transportError(e: unknown, what: string, endpoint: string): TransportError {
    const target = `${endpoint} (${what})`;
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
    return new TransportError("request_failed", `${what} to ${endpoint} failed: ${describe(e)}`, {
      cause: e,
    });
  }
}

/** The page envelope of every list endpoint, checked before its items. */
const PAGE: ResponseSchema<{ items: unknown[]; next_cursor: string | null }> = {
  safeParse(raw) {
    const page = raw as { items?: unknown; next_cursor?: unknown } | null;
    const issues: ResponseIssue[] = [];
    if (typeof page !== "object" || page === null || Array.isArray(page)) {
      issues.push({ path: [], message: "expected an object {items, next_cursor}" });
    } else {
      if (!Array.isArray(page.items)) issues.push({ path: ["items"], message: "expected array" });
      if (page.next_cursor !== null && typeof page.next_cursor !== "string") {
        issues.push({ path: ["next_cursor"], message: "expected string or null" });
      }
    }
    return issues.length
      ? { success: false, error: { issues } }
      : { success: true, data: raw as { items: unknown[]; next_cursor: string | null } };
  },
};

/**
 * `raw` checked by `schema`, as its parsed value.
 *
 * @throws TransportError `request_failed` naming the first three issues (paths below `at`)
 */
function validated<T>(
  schema: ResponseSchema<T>,
  raw: unknown,
  what: string,
  at: PropertyKey[] = [],
): T {
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const why = parsed.error.issues
    .slice(0, 3)
    .map((i) => `${[...at, ...i.path].map(String).join(".") || "(root)"}: ${i.message}`)
    .join("; ");
  throw new TransportError("request_failed", `unexpected response from ${what}: ${why}`);
}

/** A failed try: its error, and whether the connection was never opened. */
class AttemptFailed extends Error {
  constructor(readonly error: TransportError, readonly neverConnected: boolean) {
    super(error.message);
  }
}

/**
 * The errors of every endpoint tried: one error as it is; several as one line naming each
 * (`no endpoint answered (2 tried): …; …`) with the last one's code.
 */
function combined(failures: TransportError[]): TransportError {
  const last = failures[failures.length - 1];
  if (failures.length === 1) return last;
  return new TransportError(
    last.code,
    `no endpoint answered (${failures.length} tried): ` +
      failures.map((f) => f.message).join("; "),
    { cause: last },
  );
}

/**
 * True when `e` (or its cause chain) says no connection was ever opened, so the request
 * cannot have reached a server: a refused TCP connection, a failed DNS lookup or TLS
 * handshake (Deno's fetch: `client error (Connect)`).
 */
export function neverConnected(e: unknown): boolean {
  if (isConnectionRefused(e)) return true;
  for (let cur: unknown = e, depth = 0; cur && depth < 5; depth++) {
    const msg = cur instanceof Error ? cur.message : String(cur);
    if (/client error \(Connect\)/.test(msg)) return true;
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  return false;
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
