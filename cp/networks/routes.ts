/**
 * Networks on the public API (shared/api/networks.ts has the contract). Reads need `vm:read`
 * (every role: choosing a network is part of creating a VM); writes `cluster:manage` (admin).
 * - `POST /v1/networks` → 201 Network
 * - `GET /v1/networks?limit=&cursor=` → `{items: Network[], next_cursor}`
 * - `GET /v1/networks/{name}` → Network
 * - `DELETE /v1/networks/{name}` → 200 the deleted Network
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ResourceNameSchema } from "../../shared/api/common.ts";
import {
  type Network,
  NetworkCreateRequestSchema,
  NetworkListQuerySchema,
} from "../../shared/api/networks.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { keys, type NetworkRecord } from "../repo/records.ts";
import { validate } from "../routes/validate.ts";
import type { NetworkAllocation } from "./ipam.ts";
import { createNetwork, deleteNetwork, getNetwork, networkView } from "./service.ts";

const NameParam = z.object({ name: ResourceNameSchema });

/** The network routes (mounted at `/v1/networks`). */
export function networkRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));

  r.post(
    "/",
    requirePermission("cluster:manage"),
    validate("json", NetworkCreateRequestSchema),
    async (c) => c.json(await createNetwork(ctx, c.req.valid("json")), 201),
  );

  r.get(
    "/",
    requirePermission("vm:read"),
    validate("query", NetworkListQuerySchema),
    async (c) => {
      const q = c.req.valid("query");
      const page = await ctx.store.range<NetworkRecord>(keys.networks, {
        limit: q.limit,
        cursor: q.cursor,
      });
      const items: Network[] = [];
      for (const kv of page.kvs) {
        const alloc = await ctx.store.get<NetworkAllocation>(
          keys.networkAllocation(kv.value.name),
        );
        items.push(networkView(kv.value, alloc?.value ?? null));
      }
      return c.json({ items, next_cursor: page.nextCursor });
    },
  );

  r.get("/:name", requirePermission("vm:read"), validate("param", NameParam), async (c) => {
    const { net, alloc } = await getNetwork(ctx, c.req.valid("param").name);
    return c.json(networkView(net.value, alloc?.value ?? null));
  });

  r.delete(
    "/:name",
    requirePermission("cluster:manage"),
    validate("param", NameParam),
    async (c) => c.json(await deleteNetwork(ctx, c.req.valid("param").name)),
  );

  return r;
}
