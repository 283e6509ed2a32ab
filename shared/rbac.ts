/**
 * Roles and their permissions: the one place the RBAC table lives (spec: storage pools
 * "admin-only to create or delete (storage_pool:manage)", cluster "cluster:manage").
 *
 * @module
 */

/** A permission checked by the control plane's RBAC middleware. */
export type Permission =
  | "vm:read"
  | "vm:write"
  /** Attach to a VM's serial console (a write: keystrokes reach the guest). */
  | "vm:console"
  | "node:read"
  | "node:manage"
  | "storage_pool:read"
  | "storage_pool:manage"
  | "cluster:manage"
  | "task:read"
  | "token:self";

/** A user role. */
export type Role = "admin" | "operator" | "developer" | "viewer";

const WRITE_VMS: Permission[] = ["vm:write", "vm:console"];

const READ: Permission[] = ["vm:read", "node:read", "storage_pool:read", "task:read", "token:self"];

/** Role → granted permissions. */
export const ROLE_PERMISSIONS: Record<Role, ReadonlySet<Permission>> = {
  admin: new Set<Permission>([
    ...READ,
    ...WRITE_VMS,
    "node:manage",
    "storage_pool:manage",
    "cluster:manage",
  ]),
  operator: new Set<Permission>([...READ, ...WRITE_VMS, "node:manage"]),
  developer: new Set<Permission>([...READ, ...WRITE_VMS]),
  viewer: new Set<Permission>(READ),
};

/** True when `role` grants `permission`. */
export function can(role: Role, permission: Permission): boolean {
  return ROLE_PERMISSIONS[role]?.has(permission) ?? false;
}
