/**
 * The cluster default pool (spec 001 "Cluster configuration", "Cluster default-pool
 * configuration"), held in the cluster settings (`/cluster/settings`, {@link ClusterSettings}):
 * read, set (by pool NAME, matched case-insensitively; at least one instance must exist) and
 * clear. `vm create` without a pool resolves it (cp/vms/service.ts); unset, such a create is
 * 400 `default_pool_not_set`.
 *
 * @module
 */
import type { ClusterDefaultPool } from "../../shared/api/cluster.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { type ClusterSettings, keys } from "../repo/records.ts";
import type { Compare } from "../store/store.ts";
import { instancesNamed } from "../pools/service.ts";

/** The served form of the settings (`settings` null: never set). */
function view(settings: ClusterSettings | null): ClusterDefaultPool {
  return {
    default_pool_name: settings?.default_pool_name ?? null,
    updated_at: settings?.updated_at ?? null,
  };
}

/** The cluster default pool. */
export async function getDefaultPool(ctx: CpContext): Promise<ClusterDefaultPool> {
  return view((await ctx.store.get<ClusterSettings>(keys.settings))?.value ?? null);
}

/**
 * Writes `name` (null: clear) as the default pool, guarded by `guard` (the pool instance that
 * proved the name exists must still be there).
 */
async function writeDefault(
  ctx: CpContext,
  name: string | null,
  guard: Compare[],
): Promise<{ ok: boolean; previous: string | null; settings: ClusterSettings }> {
  const cur = await ctx.store.get<ClusterSettings>(keys.settings);
  const settings: ClusterSettings = {
    ...(cur?.value ?? {}),
    default_pool_name: name,
    updated_at: ctx.now().toISOString(),
  };
  const res = await ctx.store.txn({
    compare: [
      cur ? { key: keys.settings, modRevision: cur.modRevision } : {
        key: keys.settings,
        absent: true,
      },
      ...guard,
    ],
    success: [{ type: "put", key: keys.settings, value: settings }],
  });
  return { ok: res.succeeded, previous: cur?.value.default_pool_name ?? null, settings };
}

/**
 * Makes pool `name` (already lowercased by the request schema) the cluster default.
 *
 * @throws ApiError `pool_not_found` when no instance of the pool exists
 */
export async function setDefaultPool(ctx: CpContext, name: string): Promise<ClusterDefaultPool> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const [first] = await instancesNamed(ctx, name);
    if (!first) {
      throw new ApiError(
        "pool_not_found",
        `pool "${name}" not found: the default pool must name an existing pool ` +
          "(see otherix pool list)",
        { pool: name },
      );
    }
    const { ok, previous, settings } = await writeDefault(ctx, name, [
      { key: first.key, absent: false },
    ]);
    if (!ok) continue;
    ctx.log.info("cluster default pool set", { pool: name, previous });
    return view(settings);
  }
  throw new ApiError("internal_error", "cluster settings: too many concurrent updates");
}

/** Clears the cluster default pool (idempotent). */
export async function unsetDefaultPool(ctx: CpContext): Promise<ClusterDefaultPool> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const { ok, previous, settings } = await writeDefault(ctx, null, []);
    if (!ok) continue;
    ctx.log.info("cluster default pool cleared", { previous });
    return view(settings);
  }
  throw new ApiError("internal_error", "cluster settings: too many concurrent updates");
}
