/**
 * What every route of the public API requires, in one table: with the role table of
 * shared/rbac.ts it is the permission matrix. A test walks every route of the real app
 * (`app.routes`) for every role and for bad credentials against this table
 * (test/cp/rbac_matrix_test.ts), the audit log names actions from it (cp/audit/), and
 * docs/permissions.md is generated from it ({@link permissionsMarkdown}; `deno run
 * --allow-write --allow-run cp/auth/route_permissions.ts` rewrites the file, and a test fails
 * when it is stale).
 *
 * @module
 */
import { can, type Permission, PERMISSIONS, type Role, ROLES } from "../../shared/rbac.ts";

/** What a route requires of its caller. */
export type Access =
  /** Nothing: no credential is checked. */
  | { kind: "public" }
  /** Any valid credential, whatever the role. */
  | { kind: "authenticated" }
  /** A valid credential whose role grants `permission`; `owner`: only the caller's own VMs
   * without `vm:manage` (cp/auth/ownership.ts). */
  | { kind: "permission"; permission: Permission; owner?: boolean }
  /** The single-use console token in the query is the credential (cp/console/). */
  | { kind: "console_token" };

/** One route of the public API. */
export interface RouteRule {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Hono path (`/v1/vms/:name`). */
  path: string;
  access: Access;
  /** The audit log's name of the call (`vm.start`). */
  action: string;
  summary: string;
}

const pub = { kind: "public" } as const;
const anyone = { kind: "authenticated" } as const;
const perm = (permission: Permission, owner = false): Access =>
  owner ? { kind: "permission", permission, owner } : { kind: "permission", permission };

const VM_VERBS = ["start", "stop", "poweroff", "reboot", "pause", "resume", "reset"] as const;

/** Every route of the public API. */
export const ROUTE_RULES: readonly RouteRule[] = [
  { method: "GET", path: "/healthz", access: pub, action: "health.live", summary: "liveness" },
  { method: "GET", path: "/readyz", access: pub, action: "health.ready", summary: "readiness" },
  {
    method: "GET",
    path: "/metrics",
    access: pub,
    action: "metrics.read",
    summary: "Prometheus metrics",
  },
  {
    method: "GET",
    path: "/v1/openapi.json",
    access: pub,
    action: "openapi.read",
    summary: "the OpenAPI document",
  },
  {
    method: "POST",
    path: "/v1/auth/login",
    access: pub,
    action: "auth.login",
    summary: "log in (throttled per email and address)",
  },
  {
    method: "GET",
    path: "/v1/auth/oidc",
    access: pub,
    action: "auth.oidc.config",
    summary: "OIDC sign-on settings (404 when off)",
  },
  {
    method: "POST",
    path: "/v1/auth/oidc/login",
    access: pub,
    action: "auth.oidc.login",
    summary: "sign in with an OIDC ID token",
  },
  {
    method: "GET",
    path: "/v1/auth/jwt-keys",
    access: perm("cluster:manage"),
    action: "auth.jwt_keys.list",
    summary: "list JWT signing keys",
  },
  {
    method: "POST",
    path: "/v1/auth/jwt-keys/rotate",
    access: perm("cluster:manage"),
    action: "auth.jwt_keys.rotate",
    summary: "rotate the JWT signing key",
  },
  {
    method: "GET",
    path: "/v1/users/me",
    access: perm("token:self"),
    action: "user.me",
    summary: "who am I",
  },
  {
    method: "PUT",
    path: "/v1/users/me/password",
    access: perm("token:self"),
    action: "user.password.change",
    summary: "change one's own password",
  },
  {
    method: "POST",
    path: "/v1/users/me/api-tokens",
    access: perm("token:self"),
    action: "token.create",
    summary: "create an own API token",
  },
  {
    method: "GET",
    path: "/v1/users/me/api-tokens",
    access: perm("token:self"),
    action: "token.list",
    summary: "list own API tokens",
  },
  {
    method: "DELETE",
    path: "/v1/users/me/api-tokens/current",
    access: perm("token:self"),
    action: "token.revoke",
    summary: "revoke the API token in use",
  },
  {
    method: "DELETE",
    path: "/v1/users/me/api-tokens/:id",
    access: perm("token:self"),
    action: "token.revoke",
    summary: "revoke an own API token",
  },
  {
    method: "POST",
    path: "/v1/users",
    access: perm("user:manage"),
    action: "user.create",
    summary: "create a user",
  },
  {
    method: "GET",
    path: "/v1/users",
    access: perm("user:manage"),
    action: "user.list",
    summary: "list users",
  },
  {
    method: "GET",
    path: "/v1/users/:ref",
    access: perm("user:manage"),
    action: "user.get",
    summary: "get a user",
  },
  {
    method: "PUT",
    path: "/v1/users/:ref/role",
    access: perm("user:manage"),
    action: "user.set_role",
    summary: "set a user's role",
  },
  {
    method: "PUT",
    path: "/v1/users/:ref/password",
    access: perm("user:manage"),
    action: "user.reset_password",
    summary: "reset a user's password",
  },
  {
    method: "DELETE",
    path: "/v1/users/:ref",
    access: perm("user:manage"),
    action: "user.delete",
    summary: "delete a user",
  },
  {
    method: "GET",
    path: "/v1/users/:ref/api-tokens",
    access: perm("user:manage"),
    action: "token.list",
    summary: "list a user's API tokens",
  },
  {
    method: "DELETE",
    path: "/v1/users/:ref/api-tokens/:id",
    access: perm("user:manage"),
    action: "token.revoke",
    summary: "revoke a user's API token",
  },
  {
    method: "GET",
    path: "/v1/audit",
    access: perm("audit:read"),
    action: "audit.list",
    summary: "read the audit log",
  },
  {
    method: "POST",
    path: "/v1/nodes/join-tokens",
    access: perm("node:manage"),
    action: "node.join_token.create",
    summary: "mint a join token",
  },
  {
    method: "GET",
    path: "/v1/nodes/join-tokens",
    access: perm("node:manage"),
    action: "node.join_token.list",
    summary: "list join tokens",
  },
  {
    method: "DELETE",
    path: "/v1/nodes/join-tokens/:id",
    access: perm("node:manage"),
    action: "node.join_token.revoke",
    summary: "revoke a join token",
  },
  {
    method: "GET",
    path: "/v1/nodes",
    access: perm("node:read"),
    action: "node.list",
    summary: "list nodes",
  },
  {
    method: "GET",
    path: "/v1/nodes/:name",
    access: perm("node:read"),
    action: "node.get",
    summary: "get a node (full view with node:manage)",
  },
  {
    method: "POST",
    path: "/v1/nodes/:name/cordon",
    access: perm("node:manage"),
    action: "node.cordon",
    summary: "cordon a node",
  },
  {
    method: "POST",
    path: "/v1/nodes/:name/uncordon",
    access: perm("node:manage"),
    action: "node.uncordon",
    summary: "uncordon a node",
  },
  {
    method: "POST",
    path: "/v1/nodes/:name/ping",
    access: perm("node:manage"),
    action: "node.ping",
    summary: "ping a node's agent",
  },
  {
    method: "DELETE",
    path: "/v1/nodes/:name",
    access: perm("node:manage"),
    action: "node.delete",
    summary: "delete a node",
  },
  {
    method: "GET",
    path: "/v1/pools",
    access: perm("storage_pool:read"),
    action: "pool.list",
    summary: "list pools",
  },
  {
    method: "POST",
    path: "/v1/pools",
    access: perm("storage_pool:manage"),
    action: "pool.create",
    summary: "create a pool",
  },
  {
    method: "GET",
    path: "/v1/pools/:ref",
    access: perm("storage_pool:read"),
    action: "pool.get",
    summary: "get a pool",
  },
  {
    method: "DELETE",
    path: "/v1/pools/:ref",
    access: perm("storage_pool:manage"),
    action: "pool.delete",
    summary: "delete a pool",
  },
  {
    method: "POST",
    path: "/v1/pools/:ref/scan",
    access: perm("storage_pool:manage"),
    action: "pool.scan",
    summary: "scan a pool",
  },
  {
    method: "GET",
    path: "/v1/cluster/default-pool",
    access: anyone,
    action: "cluster.default_pool.get",
    summary: "get the default pool",
  },
  {
    method: "PUT",
    path: "/v1/cluster/default-pool",
    access: perm("cluster:manage"),
    action: "cluster.default_pool.set",
    summary: "set the default pool",
  },
  {
    method: "DELETE",
    path: "/v1/cluster/default-pool",
    access: perm("cluster:manage"),
    action: "cluster.default_pool.unset",
    summary: "clear the default pool",
  },
  {
    method: "POST",
    path: "/v1/cluster/join-tokens",
    access: perm("cluster:manage"),
    action: "cluster.join_token.create",
    summary: "mint a control-plane join token",
  },
  {
    method: "DELETE",
    path: "/v1/cluster/members/:name",
    access: perm("cluster:manage"),
    action: "cluster.member.remove",
    summary: "remove a store member",
  },
  {
    method: "GET",
    path: "/v1/cluster/members",
    access: perm("node:read"),
    action: "cluster.members.list",
    summary: "list the control plane's store members",
  },
  {
    method: "POST",
    path: "/v1/networks",
    access: perm("cluster:manage"),
    action: "network.create",
    summary: "create a network",
  },
  {
    method: "GET",
    path: "/v1/networks",
    access: perm("vm:read"),
    action: "network.list",
    summary: "list networks",
  },
  {
    method: "GET",
    path: "/v1/networks/:name",
    access: perm("vm:read"),
    action: "network.get",
    summary: "get a network",
  },
  {
    method: "DELETE",
    path: "/v1/networks/:name",
    access: perm("cluster:manage"),
    action: "network.delete",
    summary: "delete a network",
  },
  {
    method: "GET",
    path: "/console/assets/:file",
    access: pub,
    action: "console.asset",
    summary: "console page assets",
  },
  {
    method: "GET",
    path: "/console/:name",
    access: pub,
    action: "console.page",
    summary: "console page (logs in itself)",
  },
  {
    method: "POST",
    path: "/v1/vms/:name/console",
    access: perm("vm:console", true),
    action: "vm.console",
    summary: "issue a console ticket",
  },
  {
    method: "GET",
    path: "/v1/vms/:name/console",
    access: { kind: "console_token" },
    action: "vm.console.attach",
    summary: "attach (WebSocket)",
  },
  {
    method: "POST",
    path: "/v1/vms",
    access: perm("vm:write"),
    action: "vm.create",
    summary: "create a VM (the caller owns it)",
  },
  {
    method: "GET",
    path: "/v1/vms",
    access: perm("vm:read"),
    action: "vm.list",
    summary: "list VMs",
  },
  {
    method: "GET",
    path: "/v1/vms/:name",
    access: perm("vm:read"),
    action: "vm.get",
    summary: "get a VM",
  },
  {
    method: "DELETE",
    path: "/v1/vms/:name",
    access: perm("vm:write", true),
    action: "vm.delete",
    summary: "delete a VM",
  },
  ...VM_VERBS.map((verb): RouteRule => ({
    method: "POST",
    path: `/v1/vms/:name/${verb}`,
    access: perm("vm:write", true),
    action: `vm.${verb}`,
    summary: `${verb} a VM`,
  })),
  {
    method: "GET",
    path: "/v1/vms/:name/console-log",
    access: perm("vm:read"),
    action: "vm.console_log",
    summary: "serial console log",
  },
  {
    method: "GET",
    path: "/v1/tasks/:id",
    access: perm("task:read"),
    action: "task.get",
    summary: "get a task",
  },
  {
    method: "GET",
    path: "/v1/events",
    access: anyone,
    action: "events.watch",
    summary: "event stream (each kind filtered by its read permission)",
  },
];

const BY_ROUTE = new Map(ROUTE_RULES.map((r) => [`${r.method} ${r.path}`, r]));

/** The rule of a route (`method` upper case, Hono `path`), if the table has it. */
export function ruleFor(method: string, path: string): RouteRule | undefined {
  return BY_ROUTE.get(`${method} ${path}`);
}

/** Which roles a rule lets through (public and token routes: every role). */
export function rolesAllowed(access: Access): Role[] {
  return access.kind === "permission" ? ROLES.filter((r) => can(r, access.permission)) : [...ROLES];
}

function accessCell(a: Access): string {
  switch (a.kind) {
    case "public":
      return "public";
    case "authenticated":
      return "any credential";
    case "console_token":
      return "console token";
    case "permission":
      return `\`${a.permission}\`${a.owner ? " (own VMs¹)" : ""}`;
  }
}

function roleCell(a: Access, role: Role): string {
  if (a.kind !== "permission") return "✓";
  if (!can(role, a.permission)) return "—";
  return a.owner && !can(role, "vm:manage") ? "own" : "✓";
}

/**
 * docs/permissions.md: the role → permission table, then every route with what it needs and
 * which roles pass (`✓`, `own`: only their own VMs, `—`: 403).
 */
export function permissionsMarkdown(): string {
  const lines: string[] = [
    "# Permissions",
    "",
    "<!-- Generated from shared/rbac.ts and cp/auth/route_permissions.ts by",
    "     `deno run --allow-write --allow-run cp/auth/route_permissions.ts`; test/cp/rbac_matrix_test.ts",
    "     fails when this file is stale, and walks every route below for every role. Do not edit",
    "     by hand. -->",
    "",
    "Roles: `admin` does everything; `operator` manages every VM and the nodes; `developer`",
    "creates VMs and changes only its own; `viewer` reads. Without a valid credential every",
    "route but the public ones answers 401 `unauthenticated`; a role without the permission",
    "gets 403 `permission_denied`.",
    "",
    "## Roles",
    "",
    `| permission | ${ROLES.join(" | ")} |`,
    `| --- | ${ROLES.map(() => "---").join(" | ")} |`,
    ...PERMISSIONS.map((p) =>
      `| \`${p}\` | ${ROLES.map((r) => (can(r, p) ? "✓" : "—")).join(" | ")} |`
    ),
    "",
    "## Routes",
    "",
    `| method | path | needs | ${ROLES.join(" | ")} | audit action |`,
    `| --- | --- | --- | ${ROLES.map(() => "---").join(" | ")} | --- |`,
    ...ROUTE_RULES.map((r) =>
      `| ${r.method} | \`${r.path}\` | ${accessCell(r.access)} | ${
        ROLES.map((role) => roleCell(r.access, role)).join(" | ")
      } | \`${r.action}\` |`
    ),
    "",
    "¹ Without `vm:manage` (operator, admin), a caller changes only the VMs it owns (`owner_id`,",
    "set at create); another user's VM answers 403 `permission_denied`. Reading stays open",
    "to `vm:read`.",
    "",
    "The audit log (`GET /v1/audit`, `otherix audit list`) records every call that is not a",
    "GET, and every failed login, under the action named above.",
    "",
  ];
  return lines.join("\n");
}

/**
 * {@link permissionsMarkdown} as `deno fmt` lays it out (tables aligned, lines wrapped at 100),
 * so formatting the repository leaves docs/permissions.md as generated. Runs `deno fmt`
 * (needs `--allow-run`).
 *
 * @throws Error when `deno fmt` fails
 */
export async function formattedPermissionsMarkdown(): Promise<string> {
  const fmt = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--line-width=100", "--ext=md", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = fmt.stdin.getWriter();
  await w.write(new TextEncoder().encode(permissionsMarkdown()));
  await w.close();
  const out = await fmt.output();
  if (!out.success) throw new Error(`deno fmt: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

if (import.meta.main) {
  const out = new URL("../../docs/permissions.md", import.meta.url);
  await Deno.writeTextFile(out, await formattedPermissionsMarkdown());
  console.log(`wrote ${out.pathname}`);
}
