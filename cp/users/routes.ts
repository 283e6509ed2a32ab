/**
 * Users and API tokens:
 * - `GET /v1/users/me` → {@link User}
 * - `POST /v1/users/me/api-tokens` → 201 ApiTokenCreateResponse (`plaintext_token` shown
 *   once; only its SHA-256 is stored)
 * - `GET /v1/users/me/api-tokens` → `{items: ApiToken[], next_cursor}` (never the secret)
 * - `DELETE /v1/users/me/api-tokens/{id}` → 204 (revoke)
 * - `POST /v1/users` (`cluster:manage`) {email, password, role} → 201 {@link User}
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import {
  type ApiToken,
  ApiTokenCreateRequestSchema,
  type ApiTokenCreateResponse,
  UserCreateRequestSchema,
} from "../../shared/api/auth.ts";
import { ListQuerySchema } from "../../shared/api/common.ts";
import { ApiError } from "../../shared/errors.ts";
import { validate } from "../routes/validate.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import { generateApiToken, hashToken } from "../auth/tokens.ts";
import type { CpContext } from "../context.ts";
import { type ApiTokenRecord, keys } from "../repo/records.ts";
import { createUser, userView } from "./service.ts";
import { listPage } from "../routes/paging.ts";

function tokenView(t: ApiTokenRecord): ApiToken {
  return {
    id: t.id,
    name: t.name,
    description: t.description,
    created_at: t.created_at,
    expires_at: t.expires_at,
  };
}

/** The user routes (mounted at `/v1/users`). */
export function userRoutes(ctx: CpContext): Hono<AppEnv> {
  const { store } = ctx;
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(store, ctx.jwtSecret, ctx.now));

  r.get("/me", (c) => c.json(userView(c.get("user"))));

  r.post(
    "/me/api-tokens",
    requirePermission("token:self"),
    validate("json", ApiTokenCreateRequestSchema),
    async (c) => {
      const body = c.req.valid("json");
      const user = c.get("user");
      const token = generateApiToken();
      const now = ctx.now();
      const rec: ApiTokenRecord = {
        id: crypto.randomUUID(),
        user_id: user.id,
        name: body.name,
        description: body.description ?? null,
        token_hash: await hashToken(token),
        created_at: now.toISOString(),
        expires_at: body.ttl_seconds
          ? new Date(now.getTime() + body.ttl_seconds * 1000).toISOString()
          : null,
      };
      await store.txn({
        compare: [],
        success: [
          { type: "put", key: keys.apiToken(rec.token_hash), value: rec },
          {
            type: "put",
            key: keys.userApiToken(user.id, rec.id),
            value: { token_hash: rec.token_hash },
          },
        ],
      });
      ctx.log.info("api token created", { user_id: user.id, token_id: rec.id, name: rec.name });
      const res: ApiTokenCreateResponse = { ...tokenView(rec), plaintext_token: token };
      return c.json(res, 201);
    },
  );

  r.get(
    "/me/api-tokens",
    requirePermission("token:self"),
    validate("query", ListQuerySchema),
    async (c) => {
      const q = c.req.valid("query");
      const user = c.get("user");
      const page = await listPage<{ token_hash: string }, string>(
        store,
        keys.userApiTokens(user.id),
        q,
        (idx) => idx.token_hash,
      );
      const items: ApiToken[] = [];
      for (const hash of page.items) {
        const t = await store.get<ApiTokenRecord>(keys.apiToken(hash));
        if (t) items.push(tokenView(t.value));
      }
      return c.json({ items, next_cursor: page.next_cursor });
    },
  );

  r.delete(
    "/me/api-tokens/:id",
    requirePermission("token:self"),
    validate("param", z.object({ id: z.string().uuid() })),
    async (c) => {
      const { id } = c.req.valid("param");
      const user = c.get("user");
      const idx = await store.get<{ token_hash: string }>(keys.userApiToken(user.id, id));
      if (!idx) throw new ApiError("not_found", `api token ${id} not found`);
      await store.txn({
        compare: [],
        success: [
          { type: "delete", key: keys.apiToken(idx.value.token_hash) },
          { type: "delete", key: idx.key },
        ],
      });
      ctx.log.info("api token revoked", { user_id: user.id, token_id: id });
      return c.body(null, 204);
    },
  );

  r.post(
    "/",
    requirePermission("cluster:manage"),
    validate("json", UserCreateRequestSchema),
    async (c) => {
      const body = c.req.valid("json");
      const user = await createUser(store, body, ctx.now());
      ctx.log.info("user created", { user_id: user.id, email: user.email, role: user.role });
      return c.json(userView(user), 201);
    },
  );

  return r;
}
