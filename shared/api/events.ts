/**
 * The resource event stream (`GET /v1/events`): one Server-Sent Events endpoint that
 * follows changes of VMs, tasks, nodes and pools, resumable from a store revision (etcd watch
 * semantics; `vm list --watch`, `vm get --watch` and every `--wait` follow it).
 *
 * Query ({@link EventsQuerySchema}): `kind=vm,task` (default: every kind the caller may read),
 * `name=` (one object: a VM, node or pool name, or a task id), `since=<revision>` (or the
 * `Last-Event-ID` header): resume after that revision. Without `since` the stream first sends
 * an `added` event for every current object, then a `sync` event, then live changes.
 *
 * Frames:
 * - `event: added|modified|deleted` `data: <ResourceEvent JSON>`; live frames carry
 *   `id: <revision>` on the LAST frame of each store revision only (one transaction may change
 *   a VM and its task together: resuming from a half-read revision would skip the rest), and
 *   snapshot frames carry no `id:` (a client that drops mid-snapshot gets a fresh snapshot);
 * - `event: sync` `id: <revision>` `data: {"revision": "<revision>"}` (initial snapshot
 *   complete);
 * - `event: error` `data: <ErrorInfo JSON>`, then the stream ends (e.g. `revision_compacted`:
 *   `since` is older than the retained history, reported in the stream once the watch starts;
 *   list again and resume from the new revision);
 * - `: ping` comments every 15 s keep proxies from closing an idle stream.
 *
 * Objects are the same views the GET endpoints serve (a node's reduced view for roles without
 * `node:manage`); a deleted object's `object` is null.
 *
 * @module
 */
import { z } from "zod";

/** The kinds of resource the stream carries. */
export const EventKindSchema = z.enum(["vm", "task", "node", "pool"]);
/** An event kind. */
export type EventKind = z.infer<typeof EventKindSchema>;

/** A store revision: a decimal counter (etcd `revision`). */
export const RevisionSchema = z.string().regex(/^\d{1,20}$/, "must be a store revision (digits)");

/** `GET /v1/events` query. */
export const EventsQuerySchema = z.object({
  /** Comma-separated kinds. */
  kind: z.string().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return undefined;
    const kinds = [...new Set(v.split(",").map((k) => k.trim()))];
    for (const k of kinds) {
      if (!EventKindSchema.safeParse(k).success) {
        ctx.addIssue({ code: "custom", message: `unknown kind "${k}" (vm, task, node, pool)` });
        return z.NEVER;
      }
    }
    return kinds as EventKind[];
  }),
  name: z.string().min(1).max(253).optional(),
  since: RevisionSchema.optional(),
});
/** Parsed events query. */
export type EventsQuery = z.infer<typeof EventsQuerySchema>;

/** What happened to the object. */
export const EventTypeSchema = z.enum(["added", "modified", "deleted"]);

/** One resource event (`data:` of `added`/`modified`/`deleted` frames). */
export const ResourceEventSchema = z.object({
  /** The store revision of the change (also the frame's `id`). */
  revision: RevisionSchema,
  kind: EventKindSchema,
  type: EventTypeSchema,
  /** VM / node name, task id, or `<pool>/<node>` for a pool instance. */
  name: z.string(),
  /** The object's view after the change; null when deleted. */
  object: z.unknown().nullable(),
});
/** A resource event. */
export type ResourceEvent = z.infer<typeof ResourceEventSchema>;

/** `data:` of the `sync` frame. */
export const SyncEventSchema = z.object({ revision: RevisionSchema });
