/**
 * `--watch` (`vm list --watch`, `vm get NAME --watch`, like `kubectl get -w`): follows the
 * event stream of one kind, keeps the current objects by name, and reports the initial set
 * once, then every change, until Ctrl+C.
 *
 * When the stream has to start over (its resume point was compacted), the new snapshot is
 * compared with what was reported: only objects that changed, appeared or disappeared are
 * reported again, so the output stays one line (or document) per change.
 *
 * @module
 */
import type { z } from "zod";
import type { EventKind } from "../shared/api/events.ts";
import type { ApiClient } from "./client.ts";
import { ApiCallError, TransportError } from "./errors.ts";
import { followEvents } from "./events.ts";
import type { Io } from "./io.ts";

/** An object as the stream served it: parsed and raw (for `-o json|yaml`). */
export interface Watched<T> {
  name: string;
  object: T;
  raw: unknown;
}

/** A change after the initial set. */
export type WatchChange<T> =
  | { type: "added" | "modified"; current: Watched<T> }
  /** `last`: the object as last reported. */
  | { type: "deleted"; last: Watched<T> };

/** Options of {@link watchKind}. */
export interface WatchKindOptions<S extends z.ZodType> {
  kind: EventKind;
  /** One object (`name=`); the initial set then holds it or nothing. */
  name?: string;
  /** Schema of the objects (a frame that does not match is a `request_failed` error). */
  schema: S;
  /** Called with the objects present when the stream synced (in the server's order). */
  initial(items: Watched<z.infer<S>>[]): void;
  /** Called for each later change. */
  change(change: WatchChange<z.infer<S>>): void;
}

/**
 * Watches `kind` until SIGINT (returns normally: exit status 0) or a stream error.
 *
 * @throws ApiCallError from the stream (with a clear message for a server without the event
 *   stream), TransportError when the stream cannot be resumed or a frame is malformed, and
 *   whatever `initial` throws (e.g. `vm_not_found` for a `get` of a missing object)
 */
export async function watchKind<S extends z.ZodType>(
  client: ApiClient,
  io: Io,
  opts: WatchKindOptions<S>,
): Promise<void> {
  type T = z.infer<S>;
  const stop = new AbortController();
  const removeHandler = io.onInterrupt(() => stop.abort());
  let current = new Map<string, Watched<T>>();
  let next: Map<string, Watched<T>> | null = new Map();
  let synced = false;
  try {
    for await (
      const item of followEvents(client, io, {
        kinds: [opts.kind],
        name: opts.name,
        signal: stop.signal,
      })
    ) {
      if (item.type === "relist") next = new Map();
      if (item.type === "sync" && next) {
        if (!synced) opts.initial([...next.values()]);
        else reconcile(current, next, opts.change);
        current = next;
        next = null;
        synced = true;
      }
      if (item.type !== "event" || item.event.kind !== opts.kind) continue;
      const { event } = item;
      if (opts.name !== undefined && event.name !== opts.name) continue;
      const state = next ?? current;
      if (event.type === "deleted") {
        const last = state.get(event.name);
        state.delete(event.name);
        if (!next && last) opts.change({ type: "deleted", last });
        continue;
      }
      const parsed = opts.schema.safeParse(event.object);
      if (!parsed.success) {
        throw new TransportError(
          "request_failed",
          `unexpected ${opts.kind} in the event stream: ${parsed.error.issues[0]?.message}`,
        );
      }
      const watched: Watched<T> = { name: event.name, object: parsed.data, raw: event.object };
      const known = state.has(event.name);
      state.set(event.name, watched);
      if (!next) opts.change({ type: known ? "modified" : "added", current: watched });
    }
  } catch (e) {
    if (e instanceof ApiCallError && e.status === 404 && e.code === "not_found") {
      throw new ApiCallError(
        "not_found",
        `--watch needs the event stream (GET /v1/events), which this otherix-api does not serve`,
        e.details,
        e.status,
      );
    }
    throw e;
  } finally {
    removeHandler();
    stop.abort();
  }
}

/** Reports the differences between what was reported (`before`) and a new snapshot. */
function reconcile<T>(
  before: Map<string, Watched<T>>,
  after: Map<string, Watched<T>>,
  change: (c: WatchChange<T>) => void,
): void {
  for (const [name, now] of after) {
    const was = before.get(name);
    if (!was) change({ type: "added", current: now });
    else if (JSON.stringify(was.raw) !== JSON.stringify(now.raw)) {
      change({ type: "modified", current: now });
    }
  }
  for (const [name, last] of before) {
    if (!after.has(name)) change({ type: "deleted", last });
  }
}
