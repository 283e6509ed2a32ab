/**
 * VMs and tasks on the public API (spec: "otherix vm subcommands"; shared/api/vms.ts):
 * - `POST /v1/vms?dry_run=` (`vm:write`) VmCreateRequest → 202 Task (`vm.create`); with
 *   `dry_run=true`, 200 PlacementDecision and nothing created
 * - `GET /v1/vms` (`vm:read`) → `{items: Vm[], next_cursor}`
 * - `GET /v1/vms/{name}` (`vm:read`) → Vm, 404 `vm_not_found`
 * - `DELETE /v1/vms/{name}?force=` (`vm:write`) → 202 Task (`vm.delete`); supersedes a task
 *   in flight (see cp/vms/service.ts)
 * - `POST /v1/vms/{name}/{start|stop|poweroff|reboot|pause|resume|reset}` (`vm:write`) →
 *   202 Task (`vm.<verb>`); 409 `vm_invalid_state` / `vm_busy`
 * - `GET /v1/vms/{name}/console-log?tail_bytes=N` (`vm:read`) → `text/plain`
 * - `GET /v1/tasks/{id}` (`task:read`) → Task, 404 `task_not_found`
 *
 * Input goes through Hono's validator middleware with the shared schemas. Names are DNS
 * labels; UUID literals are refused with 400 `validation_failed`.
 *
 * Ownership (cp/auth/ownership.ts): `vm:write` changes only the caller's own VMs
 * (`owner_id`); changing another user's VM needs `vm:manage` (operator, admin), else 403
 * `permission_denied`. `image_url` must pass `images.url_policy` (shared/url_policy.ts), else
 * 400 `validation_failed` on `image_url`.
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ListQuerySchema, ResourceNameSchema } from "../../shared/api/common.ts";
import { type VmAction, VmActionSchema } from "../../shared/api/tasks.ts";
import {
  ConsoleLogQuerySchema,
  VmActionRequestSchemas,
  VmCreateQuerySchema,
  VmCreateRequestSchema,
  VmDeleteQuerySchema,
} from "../../shared/api/vms.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import { checkImageUrlPolicy, requireVmOwnership } from "../auth/ownership.ts";
import type { CpContext } from "../context.ts";
import { validate } from "../routes/validate.ts";
import { keys, type VmRecord } from "../repo/records.ts";
import { listPage } from "../routes/paging.ts";
import { getTask, taskView } from "../tasks/queue.ts";
import {
  consoleLog,
  createVm,
  deleteVm,
  dryRunCreate,
  getVm,
  requestAction,
  vmView,
} from "./service.ts";

const NameParam = z.object({ name: ResourceNameSchema });

/** The VM routes (mounted at `/v1/vms`). */
export function vmRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));

  r.post(
    "/",
    requirePermission("vm:write"),
    validate("query", VmCreateQuerySchema),
    validate("json", VmCreateRequestSchema),
    async (c) => {
      const body = c.req.valid("json");
      checkImageUrlPolicy(ctx, body.image_url);
      if (c.req.valid("query").dry_run) return c.json(await dryRunCreate(ctx, body));
      return c.json(await createVm(ctx, body, c.get("user").id), 202);
    },
  );

  r.get("/", requirePermission("vm:read"), validate("query", ListQuerySchema), async (c) => {
    return c.json(
      await listPage<VmRecord, ReturnType<typeof vmView>>(
        ctx.store,
        keys.vms,
        c.req.valid("query"),
        vmView,
      ),
    );
  });

  r.get("/:name", requirePermission("vm:read"), validate("param", NameParam), async (c) => {
    return c.json(vmView(await getVm(ctx, c.req.valid("param").name)));
  });

  r.delete(
    "/:name",
    requirePermission("vm:write"),
    validate("param", NameParam),
    requireVmOwnership(ctx),
    validate("query", VmDeleteQuerySchema),
    async (c) => {
      const { name } = c.req.valid("param");
      return c.json(await deleteVm(ctx, name, c.req.valid("query").force), 202);
    },
  );

  for (const action of VmActionSchema.options) {
    r.post(
      `/:name/${action}`,
      requirePermission("vm:write"),
      validate("param", NameParam),
      requireVmOwnership(ctx),
      validate("json", VmActionRequestSchemas[action] as z.ZodType<{ timeout_seconds?: number }>),
      async (c) => {
        const { name } = c.req.valid("param");
        const body = c.req.valid("json");
        return c.json(await requestAction(ctx, name, action as VmAction, body), 202);
      },
    );
  }

  r.get(
    "/:name/console-log",
    requirePermission("vm:read"),
    validate("param", NameParam),
    validate("query", ConsoleLogQuerySchema),
    async (c) => {
      const text = await consoleLog(
        ctx,
        c.req.valid("param").name,
        c.req.valid("query").tail_bytes,
      );
      return c.text(text, 200, { "content-type": "text/plain; charset=utf-8" });
    },
  );

  return r;
}

/** The task routes (mounted at `/v1/tasks`). */
export function taskRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));
  r.get(
    "/:id",
    requirePermission("task:read"),
    validate("param", z.object({ id: z.string().uuid() })),
    async (c) => c.json(taskView(await getTask(ctx.store, c.req.valid("param").id))),
  );
  return r;
}
