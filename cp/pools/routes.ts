/**
 * Pools on the public API (shared/api/pools.ts has the contract; reads `storage_pool:read`,
 * every role; writes `storage_pool:manage`, admin only):
 * - `GET /v1/pools?node=<name|uuid>&type=&limit=&cursor=` → `{items: PoolInstanceView[],
 *   next_cursor}`
 * - `GET /v1/pools/{name}` → Pool (aggregated); `GET /v1/pools/{uuid}` → PoolInstanceView
 * - `POST /v1/pools` PoolCreateRequest → 201 PoolInstanceView
 * - `DELETE /v1/pools/{name|uuid}?node=` → 200 the deleted PoolInstanceView
 * - `POST /v1/pools/{name|uuid}/scan?node=` → 202 PoolScans (`{items: [{node, id, task}]}`)
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import {
  isUuid,
  PoolCreateRequestSchema,
  PoolListQuerySchema,
  PoolNodeQuerySchema,
  PoolRefSchema,
  type PoolScans,
} from "../../shared/api/pools.ts";
import { ApiError } from "../../shared/errors.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { keys, type PoolRecord } from "../repo/records.ts";
import { listPage } from "../routes/paging.ts";
import { validate } from "../routes/validate.ts";
import { taskView } from "../tasks/queue.ts";
import { poolVmsLookup } from "./capacity.ts";
import { queueScan } from "./scan.ts";
import {
  createPool,
  defaultPoolName,
  deletePool,
  findInstanceById,
  instancesNamed,
  nodeNameOf,
  resolveInstances,
} from "./service.ts";
import { poolInstanceView, poolView } from "./view.ts";

const RefParam = z.object({ ref: PoolRefSchema });

/** The pool routes (mounted at `/v1/pools`). */
export function poolRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));

  /** The view of `p` (reads the default pool and the VMs placed in it). */
  const viewOf = async (p: PoolRecord) =>
    poolInstanceView(p, await defaultPoolName(ctx), (await poolVmsLookup(ctx))(p));

  r.get(
    "/",
    requirePermission("storage_pool:read"),
    validate("query", PoolListQuerySchema),
    async (c) => {
      const q = c.req.valid("query");
      const node = q.node === undefined ? undefined : await nodeNameOf(ctx, q.node);
      if (node === null) return c.json({ items: [], next_cursor: null }); // no such node id
      const def = await defaultPoolName(ctx);
      const vmsOf = await poolVmsLookup(ctx);
      const match = (p: PoolRecord) =>
        (node === undefined || p.node === node) && (!q.type || p.type === q.type);
      return c.json(
        await listPage<PoolRecord, ReturnType<typeof poolInstanceView>>(
          ctx.store,
          keys.pools,
          q,
          (p) => poolInstanceView(p, def, vmsOf(p)),
          node !== undefined || q.type ? match : undefined,
        ),
      );
    },
  );

  r.post(
    "/",
    requirePermission("storage_pool:manage"),
    validate("json", PoolCreateRequestSchema),
    async (c) => c.json(await viewOf(await createPool(ctx, c.req.valid("json"))), 201),
  );

  r.get(
    "/:ref",
    requirePermission("storage_pool:read"),
    validate("param", RefParam),
    async (c) => {
      const { ref } = c.req.valid("param");
      if (isUuid(ref)) {
        const kv = await findInstanceById(ctx, ref);
        if (!kv) {
          throw new ApiError("pool_not_found", `pool instance ${ref} not found`, { id: ref });
        }
        return c.json(await viewOf(kv.value));
      }
      const found = await instancesNamed(ctx, ref);
      if (found.length === 0) {
        throw new ApiError("pool_not_found", `pool "${ref}" not found`, { pool: ref });
      }
      const def = await defaultPoolName(ctx);
      const vmsOf = await poolVmsLookup(ctx);
      return c.json(
        poolView(ref, found.map((kv) => poolInstanceView(kv.value, def, vmsOf(kv.value))), def),
      );
    },
  );

  r.delete(
    "/:ref",
    requirePermission("storage_pool:manage"),
    validate("param", RefParam),
    validate("query", PoolNodeQuerySchema),
    async (c) => {
      const deleted = await deletePool(ctx, c.req.valid("param").ref, c.req.valid("query").node);
      return c.json(poolInstanceView(deleted, await defaultPoolName(ctx), []));
    },
  );

  r.post(
    "/:ref/scan",
    requirePermission("storage_pool:manage"),
    validate("param", RefParam),
    validate("query", PoolNodeQuerySchema),
    async (c) => {
      const found = await resolveInstances(
        ctx,
        c.req.valid("param").ref,
        c.req.valid("query").node,
      );
      const items: PoolScans["items"] = [];
      for (const kv of found) {
        const task = await queueScan(ctx, kv.key, null);
        if (task) items.push({ node: kv.value.node, id: kv.value.id, task: taskView(task) });
      }
      if (items.length === 0) {
        throw new ApiError("pool_not_found", `pool "${c.req.valid("param").ref}" was deleted`);
      }
      return c.json({ items }, 202);
    },
  );

  return r;
}
