/**
 * The audit middleware (mounted once, on the whole public API): after every call that is not
 * a read (`GET`, `HEAD`, `OPTIONS`) — and so after every login, failed or not — it records
 * who (the authenticated user, or the email a login was for), the action (from
 * cp/auth/route_permissions.ts), the target (the path parameters, or the `name`/`email` of a
 * created resource), the result and status, the error code, the source address and the time.
 * Request bodies are never recorded beyond those two fields (no passwords, no user-data).
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import type { AuditEntry } from "../../shared/api/audit.ts";
import type { AppEnv } from "../auth/middleware.ts";
import { ruleFor } from "../auth/route_permissions.ts";
import { sourceAddress } from "../auth/source.ts";
import type { AuditLog } from "./log.ts";

const READS = new Set(["GET", "HEAD", "OPTIONS"]);

/** `denied` for 401/403/429, `success` below 400, `failure` otherwise. */
export function resultOf(status: number): AuditEntry["result"] {
  if (status === 401 || status === 403 || status === 429) return "denied";
  return status < 400 ? "success" : "failure";
}

/** The matched route's Hono path (the last non-middleware route), or null (no route). */
function routePathOf(c: Parameters<MiddlewareHandler>[0]): string | null {
  const routes = c.req.matchedRoutes.filter((r) => r.method !== "ALL");
  return routes.length ? routes[routes.length - 1].path : null;
}

/** The values of `pattern`'s `:params` in `path`, in order. */
function paramValues(pattern: string, path: string): string[] {
  const p = pattern.split("/");
  const a = path.split("/");
  const out: string[] = [];
  p.forEach((seg, i) => {
    if (seg.startsWith(":") && a[i] !== undefined) {
      try {
        out.push(decodeURIComponent(a[i]));
      } catch {
        out.push(a[i]);
      }
    }
  });
  return out;
}

/** The audit middleware writing to `log` with the clock `now`. */
export function auditMiddleware(log: AuditLog, now: () => Date): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    await next();
    const method = c.req.method;
    if (READS.has(method)) return;
    const pattern = routePathOf(c);
    const rule = pattern ? ruleFor(method, pattern) : undefined;
    let target: string | null = pattern ? paramValues(pattern, c.req.path).join("/") || null : null;
    if (!target && !rule?.action.startsWith("auth.")) {
      // A create names its resource in the body (validated by then, if it got that far).
      const body = (c.req.valid as (t: string) => unknown)("json") as
        | Record<string, unknown>
        | undefined;
      const named = body?.name ?? body?.email ?? body?.node_name;
      if (typeof named === "string") target = named;
    }
    const status = c.res.status;
    let code: string | null = null;
    if (status >= 400 && c.res.headers.get("content-type")?.includes("json")) {
      try {
        code = (await c.res.clone().json())?.error?.code ?? null;
      } catch { /* not an envelope */ }
    }
    const user = c.get("user");
    const note = c.get("audit");
    await log.record({
      id: crypto.randomUUID(),
      at: now().toISOString(),
      user_id: user?.id ?? null,
      user_email: user?.email ?? note?.email ?? null,
      action: rule?.action ?? `${method} ${pattern ?? c.req.path}`,
      target,
      result: resultOf(status),
      status,
      code: note?.reason === "throttled" ? "too_many_requests" : code,
      method,
      path: c.req.path,
      source: sourceAddress(c),
    });
  };
}
