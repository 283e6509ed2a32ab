/**
 * Client of the resource event stream `GET /v1/events` (`shared/api/events.ts`): parses the
 * Server-Sent Events with `eventsource-parser` and resumes a broken stream from the last
 * `id:` it saw, as `--wait` and `--watch` need.
 *
 * @module
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import {
  type EventKind,
  type ResourceEvent,
  ResourceEventSchema,
  SyncEventSchema,
} from "../shared/api/events.ts";
import { ErrorInfoSchema } from "../shared/errors.ts";
import type { ApiClient } from "./client.ts";
import { ApiCallError, TransportError } from "./errors.ts";
import type { Io } from "./io.ts";

/** What a stream delivers. */
export type StreamItem =
  /** An `added` / `modified` / `deleted` frame. */
  | { type: "event"; event: ResourceEvent }
  /** The initial snapshot is complete (revision R). */
  | { type: "sync"; revision: string }
  /** A `: ping` comment (the server is alive; nothing changed). */
  | { type: "ping" }
  /**
   * {@link followEvents} only: the stream starts over with a fresh snapshot (its resume point
   * was compacted, or it broke before a resume point was known). Objects missing from the
   * snapshot that follows were deleted meanwhile.
   */
  | { type: "relist" };

/** The query of one stream. */
export interface EventsQuery {
  /** `kind=`; omitted: every kind the caller may read. */
  kinds?: EventKind[];
  /** `name=`: one object. */
  name?: string;
  /** `since=`: resume after this revision (no snapshot). */
  since?: string;
}

/**
 * Opens one stream connection and yields its frames until the server ends it (the generator
 * returns: the caller may resume) or `signal` aborts (returns too). A connection that breaks
 * is reported to the client, so the next connection tries the cluster's next endpoint.
 *
 * @throws ApiCallError for an error envelope before the stream (404 `not_found` from a server
 *   without the endpoint, 410 `revision_compacted`, …) or an `event: error` frame in it
 * @throws TransportError when the connection fails or a frame is not what the schema says
 */
export async function* readEvents(
  client: ApiClient,
  query: EventsQuery,
  signal: AbortSignal,
): AsyncGenerator<StreamItem & { id?: string }> {
  const { body, endpoint } = await client.stream("/v1/events", {
    query: { kind: query.kinds?.join(","), name: query.name, since: query.since },
    signal,
  });
  const pending: (StreamItem & { id?: string })[] = [];
  let failure: Error | null = null;
  const parser = createParser({
    onEvent: (msg) => {
      try {
        pending.push(parseFrame(msg));
      } catch (e) {
        failure ??= e as Error;
      }
    },
    onComment: (comment) => {
      if (comment.trim() === "ping") pending.push({ type: "ping" });
    },
  });
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  // Aborting the request does not always end a body that is being read: cancel it too.
  const onAbort = () => void reader.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort);
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<string>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal.aborted) return;
        client.endpointFailed(endpoint); // the reconnection starts with the next endpoint
        throw new TransportError("request_failed", `event stream broke: ${messageOf(e)}`, {
          cause: e,
        });
      }
      if (chunk.done) return;
      parser.feed(chunk.value);
      while (pending.length) yield pending.shift()!;
      if (failure) throw failure;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    await reader.cancel().catch(() => {});
  }
}

function parseFrame(msg: EventSourceMessage): StreamItem & { id?: string } {
  const id = msg.id || undefined;
  let data: unknown;
  try {
    data = JSON.parse(msg.data);
  } catch {
    throw new TransportError(
      "request_failed",
      `unexpected event stream frame "${msg.event}": data is not JSON`,
    );
  }
  switch (msg.event) {
    case "added":
    case "modified":
    case "deleted": {
      const parsed = ResourceEventSchema.safeParse(data);
      if (!parsed.success) throw frameError(msg.event, parsed.error.issues);
      return { type: "event", event: parsed.data, id };
    }
    case "sync": {
      const parsed = SyncEventSchema.safeParse(data);
      if (!parsed.success) throw frameError("sync", parsed.error.issues);
      return { type: "sync", revision: parsed.data.revision, id };
    }
    case "error": {
      const parsed = ErrorInfoSchema.safeParse(data);
      if (!parsed.success) throw frameError("error", parsed.error.issues);
      throw new ApiCallError(parsed.data.code, parsed.data.message, parsed.data.details);
    }
    default:
      throw new TransportError(
        "request_failed",
        `unexpected event stream frame "${msg.event ?? "message"}"`,
      );
  }
}

function frameError(
  event: string,
  issues: { path: PropertyKey[]; message: string }[],
): TransportError {
  const why = issues.slice(0, 3).map((i) =>
    `${i.path.map(String).join(".") || "(root)"}: ${i.message}`
  ).join("; ");
  return new TransportError("request_failed", `unexpected event stream frame "${event}": ${why}`);
}

/** Options of {@link followEvents}. */
export interface FollowOptions extends EventsQuery {
  /** Stops the stream (the generator returns). */
  signal: AbortSignal;
  /** Consecutive failed (re)connections tolerated before giving up; default 5. */
  maxReconnects?: number;
  /** First reconnection delay, ms (doubles up to 5 s); default 250. */
  reconnectDelayMs?: number;
}

/**
 * Follows the stream across connections: when a connection ends or breaks, reconnects with
 * `since=<last id>` (the last `id:` seen: the sync revision or a live event's revision), so
 * nothing is missed or repeated. When the resume point was compacted (410 or
 * `event: error revision_compacted`), or the connection broke before any id arrived, it starts
 * over with a fresh snapshot, announced by a `relist` item.
 *
 * @throws ApiCallError for other stream errors (404 `not_found`: the server has no event
 *   stream; 403 `permission_denied`; …), TransportError after `maxReconnects` consecutive
 *   connection failures (a connection that delivered a frame resets the count)
 */
export async function* followEvents(
  client: ApiClient,
  io: Io,
  opts: FollowOptions,
): AsyncGenerator<StreamItem> {
  const maxReconnects = opts.maxReconnects ?? 5;
  let delay = opts.reconnectDelayMs ?? 250;
  let since = opts.since;
  let failures = 0;
  let first = true;
  for (;;) {
    if (opts.signal.aborted) return;
    if (!first && since === undefined) yield { type: "relist" };
    first = false;
    let lastError: Error | null = null;
    try {
      for await (const item of readEvents(client, { ...opts, since }, opts.signal)) {
        if (item.id !== undefined) since = item.id;
        failures = 0;
        delay = opts.reconnectDelayMs ?? 250;
        const { id: _id, ...rest } = item;
        yield rest as StreamItem;
      }
      if (opts.signal.aborted) return;
      lastError = new TransportError("request_failed", "the server ended the event stream");
    } catch (e) {
      if (opts.signal.aborted) return;
      if (e instanceof ApiCallError && e.code === "revision_compacted") {
        since = undefined; // start over: list again
        continue;
      }
      if (!(e instanceof TransportError)) throw e;
      lastError = e;
    }
    if (++failures > maxReconnects) throw lastError;
    await io.sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
}

function messageOf(e: unknown): string {
  let cur: unknown = e;
  while (cur instanceof Error && cur.cause instanceof Error) cur = cur.cause;
  return cur instanceof Error ? cur.message : String(cur);
}
