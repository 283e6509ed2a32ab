/**
 * `POST /v1/auth/login` {email, password} → {@link LoginResponse} (a JWT access token valid
 * `auth.jwt_ttl_seconds`). Unknown email and wrong password both answer 401
 * `unauthenticated` "invalid email or password".
 *
 * @module
 */
import { Hono } from "hono";
import { LoginRequestSchema, type LoginResponse } from "../../shared/api/auth.ts";
import { validate } from "./validate.ts";
import { issueAccessToken } from "../auth/jwt.ts";
import type { CpContext } from "../context.ts";
import { authenticate } from "../users/service.ts";

/** The login route. */
export function authRoutes(ctx: CpContext): Hono {
  return new Hono().post("/login", validate("json", LoginRequestSchema), async (c) => {
    const body = c.req.valid("json");
    const user = await authenticate(ctx.store, body.email, body.password);
    const t = await issueAccessToken(
      ctx.jwtSecret,
      { sub: user.id, role: user.role },
      ctx.cfg.auth.jwt_ttl_seconds,
      ctx.now(),
    );
    ctx.log.info("user logged in", { user_id: user.id, email: user.email });
    const res: LoginResponse = {
      access_token: t.token,
      token_type: "Bearer",
      expires_in: t.expiresIn,
      expires_at: t.expiresAt.toISOString(),
    };
    return c.json(res);
  });
}
