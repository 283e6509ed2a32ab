/**
 * Cluster configuration on the public API (shared/api/cluster.ts has the contract):
 * - `GET /v1/cluster/default-pool` (any authenticated role) → ClusterDefaultPool
 * - `PUT /v1/cluster/default-pool` `{name}` (`cluster:manage`, admin) → ClusterDefaultPool;
 *   404 `pool_not_found`, 400 `validation_failed`
 * - `DELETE /v1/cluster/default-pool` (`cluster:manage`) → ClusterDefaultPool (cleared)
 * - `GET /v1/cluster/members` (`node:read`) → ClusterMembers (cp/cluster/members.ts)
 * - `DELETE /v1/cluster/members/{name}` (`cluster:manage`) → ClusterMembers after the removal
 * - `POST /v1/cluster/join-tokens` {ttl_seconds?} (`cluster:manage`) → 201 ClusterJoinToken
 *   (the plaintext once); 409 `conflict` on the embedded store (cp/cluster/join.ts)
 *
 * @module
 */
import { Hono } from "hono";
import {
  ClusterJoinTokenCreateRequestSchema,
  SetDefaultPoolRequestSchema,
} from "../../shared/api/cluster.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { validate } from "../routes/validate.ts";
import { getDefaultPool, setDefaultPool, unsetDefaultPool } from "./service.ts";
import { clusterMembers, removeMember } from "./members.ts";
import { createClusterJoinToken } from "./join.ts";

/** The cluster routes (mounted at `/v1/cluster`). */
export function clusterRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));
  // Every role may read the default (vm create, which every writer uses, resolves it).
  r.get("/default-pool", async (c) => c.json(await getDefaultPool(ctx)));
  r.put(
    "/default-pool",
    requirePermission("cluster:manage"),
    validate("json", SetDefaultPoolRequestSchema),
    async (c) => c.json(await setDefaultPool(ctx, c.req.valid("json").name)),
  );
  r.delete(
    "/default-pool",
    requirePermission("cluster:manage"),
    async (c) => c.json(await unsetDefaultPool(ctx)),
  );
  r.post(
    "/join-tokens",
    requirePermission("cluster:manage"),
    validate("json", ClusterJoinTokenCreateRequestSchema),
    async (c) =>
      c.json(
        await createClusterJoinToken(ctx, c.req.valid("json"), c.get("user").id),
        201,
      ),
  );
  r.delete(
    "/members/:name",
    requirePermission("cluster:manage"),
    async (c) => {
      const name = c.req.param("name");
      await removeMember(ctx, name);
      return c.json(await clusterMembers(ctx, ctx.etcd ?? null));
    },
  );
  r.get(
    "/members",
    requirePermission("node:read"),
    async (c) => c.json(await clusterMembers(ctx, ctx.etcd ?? null)),
  );
  return r;
}
