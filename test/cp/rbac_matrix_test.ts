/**
 * The permission matrix, walked for real: EVERY route of the public API (taken from the Hono
 * app itself, so a new route cannot be forgotten) × every role, anonymous, and garbage,
 * expired, revoked and wrong-key credentials, each answered with the exact status the table
 * of cp/auth/route_permissions.ts (with shared/rbac.ts) predicts. And docs/permissions.md is
 * the table's rendering, byte for byte.
 *
 * Probes change nothing that matters: they name missing resources or send invalid bodies, so
 * an allowed caller gets the route's own 4xx (or 200 for reads) and a refused one 401/403.
 * Routes that only the owner of a VM may use (without `vm:manage`) are probed on a VM owned
 * by the admin, so the developer's 403 there is the ownership rule.
 */
import { assert, assertEquals } from "../assert.ts";
import { publicApp } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import {
  formattedPermissionsMarkdown,
  permissionsMarkdown,
  ROUTE_RULES,
  type RouteRule,
  ruleFor,
} from "../../cp/auth/route_permissions.ts";
import { keys } from "../../cp/repo/records.ts";
import { getUserByEmail } from "../../cp/users/service.ts";
import { can, type Role, ROLES } from "../../shared/rbac.ts";
import { LogCapture, startTestCp } from "./fixtures.ts";

/** How a route is probed and what an allowed caller gets. */
interface Probe {
  path: string;
  body?: unknown;
  /** Status for a caller the table lets through. */
  allowed: number;
}

const GHOST = "00000000-0000-4000-8000-000000000000";
const BAD_VERB_BODY = { bogus: 1 };

/** One probe per route, keyed `METHOD /hono/path`. */
const PROBES: Record<string, Probe> = {
  "GET /healthz": { path: "/healthz", allowed: 200 },
  "GET /readyz": { path: "/readyz", allowed: 200 },
  "GET /metrics": { path: "/metrics", allowed: 200 },
  "GET /v1/openapi.json": { path: "/v1/openapi.json", allowed: 200 },
  "POST /v1/auth/login": { path: "/v1/auth/login", body: {}, allowed: 400 },
  // OIDC is not configured here: 404; an empty body is refused before that.
  "GET /v1/auth/oidc": { path: "/v1/auth/oidc", allowed: 404 },
  "POST /v1/auth/oidc/login": { path: "/v1/auth/oidc/login", body: {}, allowed: 400 },
  "GET /v1/auth/jwt-keys": { path: "/v1/auth/jwt-keys", allowed: 200 },
  "POST /v1/auth/jwt-keys/rotate": { path: "/v1/auth/jwt-keys/rotate", allowed: 200 },
  "GET /v1/users/me": { path: "/v1/users/me", allowed: 200 },
  "PUT /v1/users/me/password": { path: "/v1/users/me/password", body: {}, allowed: 400 },
  "POST /v1/users/me/api-tokens": { path: "/v1/users/me/api-tokens", body: {}, allowed: 400 },
  "GET /v1/users/me/api-tokens": { path: "/v1/users/me/api-tokens", allowed: 200 },
  // Role callers use JWTs: there is no API token in use to revoke.
  "DELETE /v1/users/me/api-tokens/current": {
    path: "/v1/users/me/api-tokens/current",
    allowed: 409,
  },
  "DELETE /v1/users/me/api-tokens/:id": { path: `/v1/users/me/api-tokens/${GHOST}`, allowed: 404 },
  "POST /v1/users": { path: "/v1/users", body: {}, allowed: 400 },
  "GET /v1/users": { path: "/v1/users", allowed: 200 },
  "GET /v1/users/:ref": { path: "/v1/users/ghost@example.com", allowed: 404 },
  "PUT /v1/users/:ref/role": { path: "/v1/users/ghost@example.com/role", body: {}, allowed: 400 },
  "PUT /v1/users/:ref/password": {
    path: "/v1/users/ghost@example.com/password",
    body: {},
    allowed: 400,
  },
  "DELETE /v1/users/:ref": { path: "/v1/users/ghost@example.com", allowed: 404 },
  "GET /v1/users/:ref/api-tokens": { path: "/v1/users/ghost@example.com/api-tokens", allowed: 404 },
  "DELETE /v1/users/:ref/api-tokens/:id": {
    path: `/v1/users/ghost@example.com/api-tokens/${GHOST}`,
    allowed: 404,
  },
  "GET /v1/audit": { path: "/v1/audit", allowed: 200 },
  "POST /v1/nodes/join-tokens": { path: "/v1/nodes/join-tokens", body: {}, allowed: 400 },
  "GET /v1/nodes/join-tokens": { path: "/v1/nodes/join-tokens", allowed: 200 },
  "DELETE /v1/nodes/join-tokens/:id": { path: `/v1/nodes/join-tokens/${GHOST}`, allowed: 404 },
  "GET /v1/nodes": { path: "/v1/nodes", allowed: 200 },
  "GET /v1/nodes/:name": { path: "/v1/nodes/ghost", allowed: 404 },
  "POST /v1/nodes/:name/cordon": { path: "/v1/nodes/ghost/cordon", allowed: 404 },
  "POST /v1/nodes/:name/uncordon": { path: "/v1/nodes/ghost/uncordon", allowed: 404 },
  "POST /v1/nodes/:name/ping": { path: "/v1/nodes/ghost/ping", allowed: 404 },
  "DELETE /v1/nodes/:name": { path: "/v1/nodes/ghost", allowed: 404 },
  "GET /v1/pools": { path: "/v1/pools", allowed: 200 },
  "POST /v1/pools": { path: "/v1/pools", body: {}, allowed: 400 },
  "GET /v1/pools/:ref": { path: "/v1/pools/ghost", allowed: 404 },
  "DELETE /v1/pools/:ref": { path: "/v1/pools/ghost", allowed: 404 },
  "POST /v1/pools/:ref/scan": { path: "/v1/pools/ghost/scan", allowed: 404 },
  "GET /v1/cluster/default-pool": { path: "/v1/cluster/default-pool", allowed: 200 },
  "PUT /v1/cluster/default-pool": { path: "/v1/cluster/default-pool", body: {}, allowed: 400 },
  "DELETE /v1/cluster/default-pool": { path: "/v1/cluster/default-pool", allowed: 200 },
  "GET /v1/cluster/members": { path: "/v1/cluster/members", allowed: 200 },
  // The embedded store has no members to add or remove: 409 once the caller may ask.
  "POST /v1/cluster/join-tokens": { path: "/v1/cluster/join-tokens", body: {}, allowed: 409 },
  "DELETE /v1/cluster/members/:name": { path: "/v1/cluster/members/x", allowed: 409 },
  "POST /v1/networks": { path: "/v1/networks", body: {}, allowed: 400 },
  "GET /v1/networks": { path: "/v1/networks", allowed: 200 },
  "GET /v1/networks/:name": { path: "/v1/networks/ghost", allowed: 404 },
  "DELETE /v1/networks/:name": { path: "/v1/networks/ghost", allowed: 404 },
  "GET /console/assets/:file": { path: "/console/assets/console.js", allowed: 200 },
  "GET /console/:name": { path: "/console/owned", allowed: 200 },
  // The owner's VM is stopped: an allowed caller meets its state, not a ticket.
  "POST /v1/vms/:name/console": { path: "/v1/vms/owned/console", allowed: 409 },
  // Not a WebSocket upgrade, no token: refused before any credential matters.
  "GET /v1/vms/:name/console": { path: "/v1/vms/owned/console", allowed: 400 },
  "POST /v1/vms": { path: "/v1/vms", body: {}, allowed: 400 },
  "GET /v1/vms": { path: "/v1/vms", allowed: 200 },
  "GET /v1/vms/:name": { path: "/v1/vms/owned", allowed: 200 },
  "DELETE /v1/vms/:name": { path: "/v1/vms/owned?force=bogus", allowed: 400 },
  "GET /v1/vms/:name/console-log": { path: "/v1/vms/ghost/console-log", allowed: 404 },
  "GET /v1/tasks/:id": { path: `/v1/tasks/${GHOST}`, allowed: 404 },
  "GET /v1/events": { path: "/v1/events", allowed: 200 },
};
for (const verb of ["start", "stop", "poweroff", "reboot", "pause", "resume", "reset"]) {
  PROBES[`POST /v1/vms/:name/${verb}`] = {
    path: `/v1/vms/owned/${verb}`,
    body: BAD_VERB_BODY,
    allowed: 400,
  };
}

type Caller = Role | "anonymous" | "garbage" | "expired" | "revoked" | "wrong-key";
const BAD: Caller[] = ["anonymous", "garbage", "expired", "revoked", "wrong-key"];

/** The status the table predicts for `caller` on `rule` probed with `probe`. */
function expected(rule: RouteRule, probe: Probe, caller: Caller): number {
  const a = rule.access;
  if (a.kind === "public" || a.kind === "console_token") return probe.allowed;
  if (!(ROLES as readonly string[]).includes(caller)) return 401;
  const role = caller as Role;
  if (a.kind === "permission") {
    if (!can(role, a.permission)) return 403;
    // The probed VM is the admin's: without vm:manage it is someone else's.
    if (a.owner && !can(role, "vm:manage")) return 403;
  }
  return probe.allowed;
}

Deno.test("rbac matrix: every route × every role and bad credential, exact statuses", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-rbac-" });
  const cp = await startTestCp(dir, new LogCapture(), "", 600);
  const base = `http://127.0.0.1:${cp.publicPort}`;
  try {
    const app = publicApp(cp.ctx);
    const appRoutes = [
      ...new Set(app.routes.filter((r) => r.method !== "ALL").map((r) => `${r.method} ${r.path}`)),
    ].sort();

    await t.step("the table, the probes and the app have the same routes", () => {
      assertEquals(appRoutes, ROUTE_RULES.map((r) => `${r.method} ${r.path}`).sort());
      assertEquals(appRoutes, Object.keys(PROBES).sort());
    });

    // Credentials.
    const login = async (email: string, password: string) =>
      (await (await fetch(`${base}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email, password }),
      })).json()).access_token as string;
    const creds = new Map<Caller, string | null>();
    const adminJwt = await login("admin@example.com", "admin-password");
    creds.set("admin", adminJwt);
    const asAdmin = (method: string, path: string, body?: unknown) =>
      fetch(base + path, {
        method,
        headers: { authorization: `Bearer ${adminJwt}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      }).then(async (r) => {
        const text = await r.text();
        return text ? JSON.parse(text) : null;
      });
    for (const role of ["operator", "developer", "viewer"] as const) {
      await asAdmin("POST", "/v1/users", {
        email: `${role}@example.com`,
        password: `${role}-password`,
        role,
      });
      creds.set(role, await login(`${role}@example.com`, `${role}-password`));
    }
    const admin = (await getUserByEmail(cp.ctx.store, "admin@example.com"))!;
    creds.set("anonymous", null);
    creds.set("garbage", "not-a-token");
    creds.set(
      "expired",
      (await issueAccessToken(
        cp.ctx.jwtSecret,
        { sub: admin.id, role: "admin" },
        60,
        new Date(Date.now() - 3600_000),
      )).token,
    );
    creds.set(
      "wrong-key",
      (await issueAccessToken(crypto.getRandomValues(new Uint8Array(32)), {
        sub: admin.id,
        role: "admin",
      }, 600)).token,
    );
    const revoked = await asAdmin("POST", "/v1/users/me/api-tokens", { name: "revoked" });
    await asAdmin("DELETE", `/v1/users/me/api-tokens/${revoked.id}`);
    creds.set("revoked", revoked.plaintext_token);

    // The admin's stopped VM the owner-only routes are probed on.
    const now = new Date().toISOString();
    await cp.ctx.store.put(keys.vm("owned"), {
      id: crypto.randomUUID(),
      name: "owned",
      owner_id: admin.id,
      image_url: "http://127.0.0.1:1/img.raw",
      image_sha256: null,
      image: "img.raw",
      image_format: "raw",
      architecture: "amd64",
      vcpus: 1,
      memory_mb: 128,
      disk_gib: 1,
      pool: "default",
      node: "node-x",
      status: "stopped",
      desired_phase: "stopped",
      restart_policy: "never",
      restart_count: 0,
      last_exit: null,
      last_task: null,
      error: null,
      user_data: null,
      pool_path: "/nowhere",
      active_task_id: null,
      last_restart_at: null,
      created_at: now,
      updated_at: now,
    });

    const mismatches: string[] = [];
    let requests = 0;
    for (const key of appRoutes) {
      const [method, path] = key.split(" ");
      const rule = ruleFor(method, path)!;
      const probe = PROBES[key];
      for (const caller of [...ROLES, ...BAD] as Caller[]) {
        const token = creds.get(caller);
        const ctrl = new AbortController();
        const res = await fetch(base + probe.path, {
          method,
          signal: ctrl.signal,
          headers: {
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            ...(probe.body !== undefined ? { "content-type": "application/json" } : {}),
          },
          body: probe.body === undefined ? undefined : JSON.stringify(probe.body),
        });
        requests++;
        const want = expected(rule, probe, caller);
        let detail = "";
        if (res.status !== want && res.headers.get("content-type")?.includes("json")) {
          detail = ` ${JSON.stringify((await res.json()).error ?? "")}`;
        } else ctrl.abort(); // the event stream never ends on its own
        await res.body?.cancel().catch(() => {});
        if (res.status !== want) {
          mismatches.push(`${key} as ${caller}: ${res.status}, table says ${want}${detail}`);
        }
      }
    }
    await t.step(`${requests} requests answered as the table says`, () => {
      assertEquals(mismatches, []);
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rbac matrix: docs/permissions.md is the table's rendering", async () => {
  const committed = await Deno.readTextFile(new URL("../../docs/permissions.md", import.meta.url));
  const generated = await formattedPermissionsMarkdown();
  assert(
    committed === generated,
    "docs/permissions.md is stale: run `deno run --allow-write --allow-run " +
      "cp/auth/route_permissions.ts`",
  );
  // Every route's row is there (the rendering is the table's).
  for (const r of ROUTE_RULES) assert(generated.includes(`\`${r.path}\``), r.path);
  assert(permissionsMarkdown().includes("| `audit:read` | ✓ | — | — | — |"));
});
