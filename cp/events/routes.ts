/**
 * `GET /v1/events` (mounted by `cp/app.ts`): the resource event stream of
 * `shared/api/events.ts` as Server-Sent Events (Hono `streamSSE`). The frames and their order
 * are described in `stream.ts`; this module authenticates, validates and picks the kinds.
 *
 * Request:
 * - `Authorization: Bearer …` (authMiddleware) → 401 `unauthenticated`;
 * - query {@link EventsQuerySchema} (`kind`, `name`, `since`) → 400 `validation_failed`;
 * - `Last-Event-ID` (what a browser's `EventSource` sends when it reconnects) takes precedence
 *   over `since` (the URL keeps the `since` of the first connection);
 * - a kind the caller's role may not read → 403 `permission_denied` (without `kind=`, the
 *   kinds it may read are streamed);
 * - `since` newer than the store's current revision → 400 `validation_failed` (a revision this
 *   store never issued: resuming from it would silently skip what happens until then).
 *
 * `since` older than the retained history is reported in the stream (`event: error`
 * `revision_compacted`), since the store tells a watch so only once it started.
 *
 * Shutdown: every open stream ends (without an error frame, so clients resume) when
 * `options.signal` aborts; abort it before shutting the HTTP server down gracefully, which
 * otherwise waits for the streams forever.
 *
 * @module
 */
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { EventsQuerySchema, RevisionSchema } from "../../shared/api/events.ts";
import { ApiError } from "../../shared/errors.ts";
import { type AppEnv, authMiddleware } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { compareRevisions } from "../store/store.ts";
import { type EventSource, selectSources } from "./source.ts";
import { runEventStream, type StreamLimits } from "./stream.ts";
import { validate } from "../routes/validate.ts";

/** Options of {@link eventRoutes}: the stream limits plus the server's shutdown signal. */
export interface EventRoutesOptions extends StreamLimits {
  /** Aborted when the control plane stops: every open stream ends. */
  signal?: AbortSignal;
}

/**
 * The event stream routes (mount at `/v1/events`) over `sources` (one per kind; see
 * `source.ts` for what a source provides).
 */
export function eventRoutes(
  ctx: CpContext,
  sources: EventSource[],
  options: EventRoutesOptions = {},
): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));
  r.get("/", validate("query", EventsQuerySchema), async (c) => {
    const query = c.req.valid("query");
    const user = c.get("user");
    const selected = selectSources(sources, query.kind, user.role);
    const since = lastEventId(c.req.header("last-event-id")) ?? query.since;
    if (since !== undefined) {
      const current = await ctx.store.currentRevision();
      if (compareRevisions(since, current) > 0) {
        throw new ApiError(
          "validation_failed",
          `invalid query: since: revision ${since} is newer than the store's current revision` +
            ` ${current}`,
          {
            fields: [{ path: "since", message: `newer than the current revision ${current}` }],
          },
        );
      }
    }
    if (options.signal?.aborted) {
      throw new ApiError("store_unavailable", "the control plane is shutting down");
    }
    return streamSSE(c, async (sse) => {
      const done = new AbortController();
      const end = () => {
        done.abort();
        sse.abort(); // unblocks a write stuck on a client that stopped reading
      };
      sse.onAbort(() => done.abort()); // the client went away (the response was cancelled)
      options.signal?.addEventListener("abort", end);
      try {
        await runEventStream(
          ctx.store,
          {
            sources: selected,
            name: query.name,
            since,
            user: { id: user.id, role: user.role },
          },
          {
            frame: (f) => sse.writeSSE(f),
            comment: (text) => sse.write(`: ${text}\n\n`).then(() => {}),
          },
          done.signal,
          options,
        );
      } catch (e) {
        ctx.log.error("event stream failed", { user: user.id, err: String(e) });
        await sse.writeSSE({
          event: "error",
          data: JSON.stringify({ code: "internal_error", message: "event stream failed" }),
        });
      } finally {
        options.signal?.removeEventListener("abort", end);
      }
    });
  });
  return r;
}

/**
 * Parses a `Last-Event-ID` header: absent or empty → undefined.
 *
 * @throws ApiError `validation_failed` when it is not a revision
 */
function lastEventId(header: string | undefined): string | undefined {
  if (header === undefined || header.trim() === "") return undefined;
  const parsed = RevisionSchema.safeParse(header.trim());
  if (!parsed.success) {
    throw new ApiError(
      "validation_failed",
      "invalid header: Last-Event-ID must be a store revision (an id sent by this stream)",
      { fields: [{ path: "Last-Event-ID", message: "must be a store revision (digits)" }] },
    );
  }
  return parsed.data;
}
