/**
 * Join-token management on the public API, mounted at `/v1/nodes/join-tokens` (ahead of the
 * node routes, whose `GET /v1/nodes/{name}` would otherwise read `join-tokens` as a node name).
 * Every route needs `node:manage` (admin, operator; developer and viewer get 403
 * `permission_denied`):
 * - `POST /` JoinTokenCreateRequest → 201 JoinTokenCreateResponse (the plaintext token, once)
 * - `GET /?limit=&cursor=` → `{items: JoinToken[], next_cursor}`: metadata only, never the
 *   token or its hash; expired and used-up tokens stay listed (`expired: true`) until revoked
 * - `DELETE /{id}` → 204; 404 `not_found` for an unknown id, 400 `validation_failed` for an id
 *   that is not a UUID. A revoked token no longer redeems (`unauthenticated`).
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ListQuerySchema } from "../../shared/api/common.ts";
import { JoinTokenCreateRequestSchema } from "../../shared/api/nodes.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { createJoinToken, listJoinTokens, revokeJoinToken } from "../join_tokens.ts";
import { validate } from "../routes/validate.ts";

const IdParam = z.object({ id: z.string().uuid() });

/** The join-token routes (mounted at `/v1/nodes/join-tokens`). */
export function joinTokenRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));
  r.use("*", requirePermission("node:manage"));

  r.post("/", validate("json", JoinTokenCreateRequestSchema), async (c) => {
    const body = c.req.valid("json");
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

  r.get("/", validate("query", ListQuerySchema), async (c) => {
    return c.json(await listJoinTokens(ctx.store, c.req.valid("query"), ctx.now()));
  });

  r.delete("/:id", validate("param", IdParam), async (c) => {
    const { id } = c.req.valid("param");
    const rec = await revokeJoinToken(ctx.store, id);
    ctx.log.info("join token revoked", {
      token_id: id,
      node: rec.node_name,
      uses: rec.uses,
      max_uses: rec.max_uses,
      by: c.get("user").id,
    });
    return c.body(null, 204);
  });

  return r;
}
