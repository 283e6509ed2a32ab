/**
 * Pools on the public API:
 * - `GET /v1/pools?node=` (`storage_pool:read`) → `{items: PoolInstance[], next_cursor}`
 *
 * @module
 */
import { Hono } from "hono";
import { ListQuerySchema, ResourceNameSchema } from "../../shared/api/common.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { validate } from "../routes/validate.ts";
import { getSettings, poolView } from "../nodes/service.ts";
import { keys, type PoolRecord } from "../repo/records.ts";
import { listPage } from "../routes/paging.ts";

const PoolListQuerySchema = ListQuerySchema.extend({ node: ResourceNameSchema.optional() });

/** The pool routes (mounted at `/v1/pools`). */
export function poolRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now));
  r.get(
    "/",
    requirePermission("storage_pool:read"),
    validate("query", PoolListQuerySchema),
    async (c) => {
      const q = c.req.valid("query");
      const def = (await getSettings(ctx))?.default_pool_name ?? null;
      return c.json(
        await listPage<PoolRecord, ReturnType<typeof poolView>>(
          ctx.store,
          keys.pools,
          q,
          (p) => poolView(p, def),
          q.node ? (p) => p.node === q.node : undefined,
        ),
      );
    },
  );
  return r;
}
