/**
 * Users and API tokens (mounted at `/v1/users`; wire types in shared/api/auth.ts and
 * shared/api/users.ts). The caller's own account (`token:self`, every role):
 *
 * - `GET /v1/users/me` → {@link User}
 * - `PUT /v1/users/me/password` {current_password, new_password} → 204 (403
 *   `permission_denied` when the current password is wrong)
 * - `POST /v1/users/me/api-tokens` → 201 ApiTokenCreateResponse (`plaintext_token` shown
 *   once; only its SHA-256 is stored)
 * - `GET /v1/users/me/api-tokens` → `{items: ApiToken[], next_cursor}` (never the secret)
 * - `DELETE /v1/users/me/api-tokens/current` → 204: revokes the API token this request
 *   authenticated with (409 `conflict` when it was a JWT)
 * - `DELETE /v1/users/me/api-tokens/{id}` → 204 (revoke)
 *
 * Every user (`user:manage`, admin); `{ref}` is a user id or an email:
 *
 * - `POST /v1/users` {email, password, role} → 201 User (409 `conflict`: the email is taken)
 * - `GET /v1/users?limit=&cursor=` → `{items: User[], next_cursor}`
 * - `GET /v1/users/{ref}` → User (404 `not_found`)
 * - `PUT /v1/users/{ref}/role` {role} → User; `PUT /v1/users/{ref}/password` {password} → 204
 * - `DELETE /v1/users/{ref}` → 204 (the user's API tokens go too)
 * - `GET /v1/users/{ref}/api-tokens`, `DELETE /v1/users/{ref}/api-tokens/{id}`: anyone's tokens
 *
 * The last admin can be neither demoted nor deleted: 409 `conflict`. The `/me` routes are
 * registered first, so `me` is never taken for a `{ref}`.
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
import {
  PasswordChangeRequestSchema,
  UserPasswordResetRequestSchema,
  UserRefSchema,
  UserRoleUpdateRequestSchema,
} from "../../shared/api/users.ts";
import { ApiError } from "../../shared/errors.ts";
import { validate } from "../routes/validate.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import { generateApiToken, hashToken } from "../auth/tokens.ts";
import type { CpContext } from "../context.ts";
import { type ApiTokenRecord, keys, type UserRecord } from "../repo/records.ts";
import {
  changeOwnPassword,
  createUser,
  deleteUser,
  listApiTokens,
  resolveUser,
  revokeApiToken,
  setPassword,
  setRole,
  userView,
} from "./service.ts";
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

const RefParam = z.object({ ref: UserRefSchema });
const TokenParam = z.object({ id: z.string().uuid() });
const RefTokenParam = z.object({ ref: UserRefSchema, id: z.string().uuid() });

/** The user routes (mounted at `/v1/users`). */
export function userRoutes(ctx: CpContext): Hono<AppEnv> {
  const { store } = ctx;
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(store, ctx.jwtSecret, ctx.now, () => ctx.cache));

  // ---- the caller's own account ----

  r.get("/me", requirePermission("token:self"), (c) => c.json(userView(c.get("user"))));

  r.put(
    "/me/password",
    requirePermission("token:self"),
    validate("json", PasswordChangeRequestSchema),
    async (c) => {
      const body = c.req.valid("json");
      const user = c.get("user");
      await changeOwnPassword(store, user, body.current_password, body.new_password);
      ctx.log.info("password changed", { user_id: user.id });
      return c.body(null, 204);
    },
  );

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

  r.delete("/me/api-tokens/current", requirePermission("token:self"), async (c) => {
    const user = c.get("user");
    const id = c.get("apiTokenId");
    if (c.get("authKind") !== "api_token" || !id) {
      throw new ApiError("conflict", "this request is not authenticated with an API token");
    }
    await revokeApiToken(store, user.id, id);
    ctx.log.info("api token revoked", { user_id: user.id, token_id: id, by: "itself" });
    return c.body(null, 204);
  });

  r.delete(
    "/me/api-tokens/:id",
    requirePermission("token:self"),
    validate("param", TokenParam),
    async (c) => {
      const { id } = c.req.valid("param");
      const user = c.get("user");
      await revokeApiToken(store, user.id, id);
      ctx.log.info("api token revoked", { user_id: user.id, token_id: id });
      return c.body(null, 204);
    },
  );

  // ---- every user (admin) ----

  r.post(
    "/",
    requirePermission("user:manage"),
    validate("json", UserCreateRequestSchema),
    async (c) => {
      const body = c.req.valid("json");
      const user = await createUser(store, body, ctx.now());
      ctx.log.info("user created", { user_id: user.id, email: user.email, role: user.role });
      return c.json(userView(user), 201);
    },
  );

  r.get("/", requirePermission("user:manage"), validate("query", ListQuerySchema), async (c) => {
    return c.json(
      await listPage<UserRecord, ReturnType<typeof userView>>(
        store,
        keys.users,
        c.req.valid("query"),
        userView,
      ),
    );
  });

  r.get("/:ref", requirePermission("user:manage"), validate("param", RefParam), async (c) => {
    return c.json(userView(await resolveUser(store, c.req.valid("param").ref)));
  });

  r.put(
    "/:ref/role",
    requirePermission("user:manage"),
    validate("param", RefParam),
    validate("json", UserRoleUpdateRequestSchema),
    async (c) => {
      const user = await setRole(store, c.req.valid("param").ref, c.req.valid("json").role);
      ctx.log.info("user role set", { user_id: user.id, role: user.role, by: c.get("user").id });
      return c.json(userView(user));
    },
  );

  r.put(
    "/:ref/password",
    requirePermission("user:manage"),
    validate("param", RefParam),
    validate("json", UserPasswordResetRequestSchema),
    async (c) => {
      const user = await setPassword(store, c.req.valid("param").ref, c.req.valid("json").password);
      ctx.log.info("user password reset", { user_id: user.id, by: c.get("user").id });
      return c.body(null, 204);
    },
  );

  r.delete("/:ref", requirePermission("user:manage"), validate("param", RefParam), async (c) => {
    const user = await deleteUser(store, c.req.valid("param").ref);
    ctx.log.info("user deleted", { user_id: user.id, email: user.email, by: c.get("user").id });
    return c.body(null, 204);
  });

  r.get(
    "/:ref/api-tokens",
    requirePermission("user:manage"),
    validate("param", RefParam),
    async (c) => {
      const user = await resolveUser(store, c.req.valid("param").ref);
      const items = (await listApiTokens(store, user.id)).map(tokenView);
      return c.json({ items, next_cursor: null });
    },
  );

  r.delete(
    "/:ref/api-tokens/:id",
    requirePermission("user:manage"),
    validate("param", RefTokenParam),
    async (c) => {
      const { ref, id } = c.req.valid("param");
      const user = await resolveUser(store, ref);
      await revokeApiToken(store, user.id, id);
      ctx.log.info("api token revoked", { user_id: user.id, token_id: id, by: c.get("user").id });
      return c.body(null, 204);
    },
  );

  return r;
}
