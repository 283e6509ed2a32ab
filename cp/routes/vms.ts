/**
 * VMs and tasks on the public API:
 * - `POST /v1/vms` (`vm:write`) VmCreateRequest → 202 Task (`vm.create`)
 * - `GET /v1/vms` (`vm:read`) → `{items: Vm[], next_cursor}`
 * - `GET /v1/vms/{name}` (`vm:read`) → Vm, 404 `vm_not_found`
 * - `DELETE /v1/vms/{name}` (`vm:write`) → 202 Task (`vm.delete`), 409 `conflict` while a
 *   create is in flight
 * - `GET /v1/vms/{name}/console-log?tail_bytes=N` (`vm:read`) → `text/plain`
 * - `GET /v1/tasks/{id}` (`task:read`) → Task, 404 `task_not_found`
 *
 * Names are DNS labels; UUID literals are refused with 400 `validation_failed`.
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ListQuerySchema, ResourceNameSchema } from "../../shared/api/common.ts";
import { ConsoleLogQuerySchema, VmCreateRequestSchema } from "../../shared/api/vms.ts";
import { parseOrThrow } from "../../shared/errors.ts";
import { jsonBody, queryOf } from "../../shared/http.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { keys, type VmRecord } from "../repo/records.ts";
import { getTask, taskView } from "../tasks/queue.ts";
import { consoleLog, createVm, deleteVm, getVm, vmView } from "../vms.ts";
import { listPage } from "./paging.ts";

const NameParam = z.object({ name: ResourceNameSchema });

/** The VM routes (mounted at `/v1/vms`). */
export function vmRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now));

  r.post("/", requirePermission("vm:write"), async (c) => {
    const body = await jsonBody(c, VmCreateRequestSchema);
    return c.json(await createVm(ctx, body, c.get("user").id), 202);
  });

  r.get("/", requirePermission("vm:read"), async (c) => {
    const q = queryOf(c, ListQuerySchema);
    return c.json(
      await listPage<VmRecord, ReturnType<typeof vmView>>(ctx.store, keys.vms, q, vmView),
    );
  });

  r.get("/:name", requirePermission("vm:read"), async (c) => {
    const { name } = parseOrThrow(NameParam, c.req.param(), "path");
    return c.json(vmView(await getVm(ctx, name)));
  });

  r.delete("/:name", requirePermission("vm:write"), async (c) => {
    const { name } = parseOrThrow(NameParam, c.req.param(), "path");
    return c.json(await deleteVm(ctx, name), 202);
  });

  r.get("/:name/console-log", requirePermission("vm:read"), async (c) => {
    const { name } = parseOrThrow(NameParam, c.req.param(), "path");
    const q = queryOf(c, ConsoleLogQuerySchema);
    const text = await consoleLog(ctx, name, q.tail_bytes);
    return c.text(text, 200, { "content-type": "text/plain; charset=utf-8" });
  });

  return r;
}

/** The task routes (mounted at `/v1/tasks`). */
export function taskRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now));
  r.get("/:id", requirePermission("task:read"), async (c) => {
    const { id } = parseOrThrow(z.object({ id: z.string().uuid() }), c.req.param(), "path");
    return c.json(taskView(await getTask(ctx.store, id)));
  });
  return r;
}
