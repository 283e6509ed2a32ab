/**
 * What the event stream (`GET /v1/events`, `shared/api/events.ts`) needs to know about each
 * kind of resource it carries, and the rules that pick the kinds and objects of one stream.
 *
 * Key convention: an object's store key is `prefix + name` (`/vms/<name>`, `/nodes/<name>`,
 * `/tasks/<id>`, `/pools/<pool>/<node>` with name `<pool>/<node>`: see `cp/repo/records.ts`).
 * The stream relies on it to narrow its listing and watch to one object (`name=`) and to name
 * a deleted object it did not see in the current connection (a delete carries no value).
 *
 * @module
 */
import type { EventKind } from "../../shared/api/events.ts";
import { ApiError } from "../../shared/errors.ts";
import { can, type Permission, type Role } from "../../shared/rbac.ts";

/** The caller a view is made for. */
export interface Viewer {
  id: string;
  role: Role;
}

/** One kind of resource the stream carries. */
export interface EventSource<T = unknown> {
  /** `vm` | `task` | `node` | `pool`. */
  kind: EventKind;
  /** Store prefix of the kind's records, e.g. `/vms/` (keys are `prefix + name`). */
  prefix: string;
  /** Needed to receive this kind (`vm:read`, `task:read`, `node:read`, `storage_pool:read`). */
  permission: Permission;
  /** The served view of a stored value for this caller (null: the caller may not see it). */
  view(value: T, user: Viewer): unknown | null;
  /** The object's name as matched by `name=` (vm/node name, task id, `<pool>/<node>`). */
  nameOf(value: T): string;
}

/**
 * The sources one stream follows: those named by `kind=` (each must be served and readable by
 * `role`), or, without `kind=`, every served source `role` may read.
 *
 * @throws ApiError 400 `validation_failed` for a kind this server does not stream; 403
 *   `permission_denied` (details `{permission, role, kind}`) for a requested kind the role
 *   may not read, or when it may read none
 */
export function selectSources(
  sources: readonly EventSource[],
  kinds: readonly EventKind[] | undefined,
  role: Role,
): EventSource[] {
  if (kinds === undefined) {
    const readable = sources.filter((s) => can(role, s.permission));
    if (readable.length === 0) {
      throw new ApiError("permission_denied", `role ${role} may not read any event kind`, {
        role,
      });
    }
    return readable;
  }
  return kinds.map((kind) => {
    const source = sources.find((s) => s.kind === kind);
    if (!source) {
      throw new ApiError("validation_failed", `invalid query: kind: "${kind}" is not streamed`, {
        fields: [{ path: "kind", message: `"${kind}" is not streamed by this server` }],
      });
    }
    if (!can(role, source.permission)) {
      throw new ApiError(
        "permission_denied",
        `role ${role} lacks permission ${source.permission} (kind=${kind})`,
        { permission: source.permission, role, kind },
      );
    }
    return source;
  });
}

/**
 * True when the object named `objectName` is the one `name=` asks for: the same name, or, for
 * pool instances (`<pool>/<node>`), any instance of the pool `name` (`/` never occurs in VM and
 * node names or task ids, so this cannot match anything else).
 */
export function matchesName(name: string | undefined, objectName: string): boolean {
  return name === undefined || objectName === name || objectName.startsWith(`${name}/`);
}

/** The name of the object stored at `key` under `source` (the key convention above). */
export function nameOfKey(source: EventSource, key: string): string {
  return key.slice(source.prefix.length);
}

/**
 * The store prefix covering what a stream on `source` needs: the source's prefix, narrowed to
 * `prefix + name` when `name=` selects one object (that prefix may cover other objects too,
 * e.g. `/vms/web` covers `/vms/web-2`; {@link matchesName} filters them).
 */
export function prefixFor(source: EventSource, name: string | undefined): string {
  return name === undefined ? source.prefix : source.prefix + name;
}

/** The longest common prefix of `prefixes` (one watch covers them all, in revision order). */
export function commonPrefix(prefixes: readonly string[]): string {
  if (prefixes.length === 0) return "";
  let p = prefixes[0];
  for (const q of prefixes.slice(1)) {
    let i = 0;
    while (i < p.length && i < q.length && p[i] === q[i]) i++;
    p = p.slice(0, i);
  }
  return p;
}
