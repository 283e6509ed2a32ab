/**
 * Nodes, join tokens and pools on the public API:
 * - `GET /v1/nodes` (`node:read`) → `{items: Node[], next_cursor}`
 * - `GET /v1/nodes/{name}` (`node:read`) → Node, 404 `node_not_found`
 * - `POST /v1/nodes/join-tokens` (`node:manage`) → 201 JoinTokenCreateResponse
 * - `GET /v1/pools?node=` (`storage_pool:read`) → `{items: PoolInstance[], next_cursor}`
 *
 * Callers without `node:manage` (developer, viewer) get the reduced node shape (no
 * `resources`; see `nodeView`).
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ListQuerySchema, ResourceNameSchema } from "../../shared/api/common.ts";
import { JoinTokenCreateRequestSchema } from "../../shared/api/nodes.ts";
import { parseOrThrow } from "../../shared/errors.ts";
import { can } from "../../shared/rbac.ts";
import { jsonBody, queryOf } from "../../shared/http.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { createJoinToken } from "../join_tokens.ts";
import { getNode, getSettings, nodeView, poolView, vmCounts } from "../nodes.ts";
import { keys, type NodeRecord, type PoolRecord } from "../repo/records.ts";
import { listPage } from "./paging.ts";

const NameParam = z.object({ name: ResourceNameSchema });

/** The node routes (mounted at `/v1/nodes`). */
export function nodeRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now));

  r.post("/join-tokens", requirePermission("node:manage"), async (c) => {
    const body = await jsonBody(c, JoinTokenCreateRequestSchema);
    const res = await createJoinToken(ctx.store, body, {
      defaultTtlSeconds: ctx.cfg.nodes.join_token_ttl_seconds,
      createdBy: c.get("user").id,
      caFingerprint: ctx.pki.caFingerprint,
      now: ctx.now(),
    });
    ctx.log.info("join token created", {
      token_id: res.id,
      node: res.node_name,
      max_uses: res.max_uses,
      expires_at: res.expires_at,
    });
    return c.json(res, 201);
  });

  r.get("/", requirePermission("node:read"), async (c) => {
    const q = queryOf(c, ListQuerySchema);
    const full = can(c.get("user").role, "node:manage");
    const counts = await vmCounts(ctx);
    return c.json(
      await listPage<NodeRecord, ReturnType<typeof nodeView>>(
        ctx.store,
        keys.nodes,
        q,
        (n) => nodeView(n, counts.get(n.name) ?? 0, full),
      ),
    );
  });

  r.get("/:name", requirePermission("node:read"), async (c) => {
    const { name } = parseOrThrow(NameParam, c.req.param(), "path");
    const node = await getNode(ctx, name);
    const full = can(c.get("user").role, "node:manage");
    return c.json(nodeView(node, (await vmCounts(ctx)).get(name) ?? 0, full));
  });

  return r;
}

const PoolListQuerySchema = ListQuerySchema.extend({ node: ResourceNameSchema.optional() });

/** The pool routes (mounted at `/v1/pools`). */
export function poolRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now));
  r.get("/", requirePermission("storage_pool:read"), async (c) => {
    const q = queryOf(c, PoolListQuerySchema);
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
  });
  return r;
}
