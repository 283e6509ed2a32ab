/**
 * Roles and their permissions: the one place the RBAC table lives (spec: storage pools
 * "admin-only to create or delete (storage_pool:manage)", cluster "cluster:manage"). Which
 * permission each route of the public API needs is cp/auth/route_permissions.ts; the two
 * together generate docs/permissions.md.
 *
 * - `admin`: everything, users and the audit log included;
 * - `operator`: manages every VM, nodes (cordon, drain, delete, join tokens);
 * - `developer`: creates VMs and changes the ones they own (others' are read-only to them);
 * - `viewer`: reads.
 *
 * @module
 */

/** A permission checked by the control plane's RBAC middleware. */
export type Permission =
  | "vm:read"
  /** Create VMs, and change (delete, lifecycle verbs) the VMs one owns. */
  | "vm:write"
  /** Change every VM, whoever owns it (with `vm:write`). */
  | "vm:manage"
  /**
   * Attach to a VM's serial console (a write: keystrokes reach the guest); only one's own VMs
   * without `vm:manage`.
   */
  | "vm:console"
  | "node:read"
  | "node:manage"
  | "storage_pool:read"
  | "storage_pool:manage"
  | "cluster:manage"
  | "task:read"
  /** One's own account: password, API tokens. */
  | "token:self"
  /** Every user and every user's API tokens. */
  | "user:manage"
  /** The audit log. */
  | "audit:read";

/** Every permission, in table order (docs/permissions.md). */
export const PERMISSIONS: readonly Permission[] = [
  "vm:read",
  "vm:write",
  "vm:manage",
  "vm:console",
  "node:read",
  "node:manage",
  "storage_pool:read",
  "storage_pool:manage",
  "cluster:manage",
  "task:read",
  "token:self",
  "user:manage",
  "audit:read",
];

/** A user role. */
export type Role = "admin" | "operator" | "developer" | "viewer";

/** Every role, most powerful first. */
export const ROLES: readonly Role[] = ["admin", "operator", "developer", "viewer"];

const WRITE_VMS: Permission[] = ["vm:write", "vm:console"];

const READ: Permission[] = ["vm:read", "node:read", "storage_pool:read", "task:read", "token:self"];

/** Role → granted permissions. */
export const ROLE_PERMISSIONS: Record<Role, ReadonlySet<Permission>> = {
  admin: new Set<Permission>([
    ...READ,
    ...WRITE_VMS,
    "vm:manage",
    "node:manage",
    "storage_pool:manage",
    "cluster:manage",
    "user:manage",
    "audit:read",
  ]),
  operator: new Set<Permission>([...READ, ...WRITE_VMS, "vm:manage", "node:manage"]),
  developer: new Set<Permission>([...READ, ...WRITE_VMS]),
  viewer: new Set<Permission>(READ),
};

/** True when `role` grants `permission`. */
export function can(role: Role, permission: Permission): boolean {
  return ROLE_PERMISSIONS[role]?.has(permission) ?? false;
}

/** True when `s` is a role name. */
export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}
