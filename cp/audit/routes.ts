/**
 * `GET /v1/audit?limit=&cursor=&user=&action=` (`audit:read`, admin) → `{items: AuditEntry[],
 * next_cursor}`, newest first; `user` matches a user id or an email (either field), `action`
 * an action name exactly (shared/api/audit.ts).
 *
 * @module
 */
import { Hono } from "hono";
import { type AuditEntry, AuditQuerySchema } from "../../shared/api/audit.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { listPage } from "../routes/paging.ts";
import { validate } from "../routes/validate.ts";
import { AUDIT_PREFIX } from "./log.ts";

/** The audit routes (mounted at `/v1/audit`). */
export function auditRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));
  r.get("/", requirePermission("audit:read"), validate("query", AuditQuerySchema), async (c) => {
    const q = c.req.valid("query");
    const user = q.user?.toLowerCase();
    const filter = user || q.action
      ? (e: AuditEntry) =>
        (!user || e.user_id === q.user || e.user_email?.toLowerCase() === user) &&
        (!q.action || e.action === q.action)
      : undefined;
    return c.json(
      await listPage<AuditEntry, AuditEntry>(ctx.store, AUDIT_PREFIX, q, (e) => e, filter),
    );
  });
  return r;
}
