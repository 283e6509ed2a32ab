/**
 * VM ownership and the image-URL policy at create, the per-resource checks the RBAC table
 * (shared/rbac.ts) cannot express on its own:
 *
 * - a VM records its creator as `owner_id`; `vm:write` changes (delete, lifecycle verbs,
 *   console) only the caller's own VMs, `vm:manage` (operator, admin) every VM; others' VMs
 *   stay readable with `vm:read`;
 * - `image_url` must pass the control plane's `images.url_policy` (shared/url_policy.ts).
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "../../shared/errors.ts";
import { can } from "../../shared/rbac.ts";
import { DEFAULT_URL_POLICY, urlPolicyProblem } from "../../shared/url_policy.ts";
import type { CpContext } from "../context.ts";
import { keys, type UserRecord, type VmRecord } from "../repo/records.ts";
import type { AppEnv } from "./middleware.ts";

/** True when `user` may change `vm`: its owner, or a role with `vm:manage`. */
export function mayChangeVm(user: UserRecord, vm: Pick<VmRecord, "owner_id">): boolean {
  return can(user.role, "vm:manage") || vm.owner_id === user.id;
}

/**
 * Route middleware (after `requirePermission("vm:write")` and the `name` param's validation):
 * 403 `permission_denied` when the VM named by the path exists and the caller may not change
 * it. A missing VM passes through, for the handler's 404 `vm_not_found`.
 *
 * @throws ApiError `permission_denied` (details `{vm, owner_id, permission: "vm:manage"}`)
 */
export function requireVmOwnership(ctx: CpContext): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const name = c.req.param("name");
    const user = c.get("user");
    if (name && user) {
      const vm = (await ctx.store.get<VmRecord>(keys.vm(name)))?.value;
      if (vm && !mayChangeVm(user, vm)) {
        throw new ApiError(
          "permission_denied",
          `vm "${name}" belongs to another user: role ${user.role} changes only its own VMs ` +
            "(vm:manage is needed for others')",
          { vm: name, owner_id: vm.owner_id, permission: "vm:manage", role: user.role },
        );
      }
    }
    await next();
  };
}

/**
 * Checks `imageUrl` against the control plane's `images.url_policy`.
 *
 * @throws ApiError 400 `validation_failed` (details.fields `[{path: "image_url", message}]`)
 */
export function checkImageUrlPolicy(ctx: CpContext, imageUrl: string): void {
  const problem = urlPolicyProblem(imageUrl, ctx.cfg.images?.url_policy ?? DEFAULT_URL_POLICY);
  if (problem) {
    throw new ApiError("validation_failed", `invalid request body: image_url: ${problem}`, {
      fields: [{ path: "image_url", message: problem }],
    });
  }
}
