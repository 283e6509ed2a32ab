/**
 * Nodes and join tokens on the public API:
 * - `GET /v1/nodes?architecture=&status=` (`node:read`) → `{items: Node[], next_cursor}`
 * - `GET /v1/nodes/{name}` (`node:read`) → Node, 404 `node_not_found`
 * - `POST /v1/nodes/{name}/cordon`, `/uncordon` (`node:manage`) → Node
 * - `POST /v1/nodes/{name}/ping` (`node:manage`) → NodePing (round trip to the agent over
 *   mTLS; 404 `node_not_found`, 409 `node_not_ready`, 502 `agent_unreachable`)
 * - `DELETE /v1/nodes/{name}?force=` (`node:manage`) → 204; 409 `conflict` while VMs live there
 *   (without `force`)
 *
 * Callers without `node:manage` (developer, viewer) get the reduced node shape (no
 * `resources`; see `nodeView`).
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import { ListQuerySchema, ResourceNameSchema } from "../../shared/api/common.ts";
import { can } from "../../shared/rbac.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";
import { pingNode } from "./ping.ts";
import { deleteNode, getNode, nodeUsageOf, nodeView, setCordoned } from "./service.ts";
import { NodeDeleteQuerySchema, NodeListFilterSchema } from "../../shared/api/nodes.ts";
import { keys, type NodeRecord } from "../repo/records.ts";
import { listPage } from "../routes/paging.ts";
import { validate } from "../routes/validate.ts";

const NameParam = z.object({ name: ResourceNameSchema });

/** The node routes (mounted at `/v1/nodes`). */
export function nodeRoutes(ctx: CpContext): Hono<AppEnv> {
  const r = new Hono<AppEnv>();
  r.use("*", authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache));

  r.get(
    "/",
    requirePermission("node:read"),
    validate("query", ListQuerySchema.extend(NodeListFilterSchema.shape)),
    async (c) => {
      const q = c.req.valid("query");
      const full = can(c.get("user").role, "node:manage");
      const usage = await nodeUsageOf(ctx);
      const match = (n: NodeRecord) =>
        (!q.architecture || n.architecture === q.architecture) &&
        (!q.status || n.status === q.status);
      return c.json(
        await listPage<NodeRecord, ReturnType<typeof nodeView>>(
          ctx.store,
          keys.nodes,
          q,
          (n) => nodeView(n, usage(n.name), full, ctx.liveness?.get(n.name)),
          q.architecture || q.status ? match : undefined,
        ),
      );
    },
  );

  for (const [verb, cordoned] of [["cordon", true], ["uncordon", false]] as const) {
    r.post(
      `/:name/${verb}`,
      requirePermission("node:manage"),
      validate("param", NameParam),
      async (c) => {
        const node = await setCordoned(ctx, c.req.valid("param").name, cordoned);
        return c.json(
          nodeView(node, (await nodeUsageOf(ctx))(node.name), true, ctx.liveness?.get(node.name)),
        );
      },
    );
  }

  r.post(
    "/:name/ping",
    requirePermission("node:manage"),
    validate("param", NameParam),
    async (c) => c.json(await pingNode(ctx, c.req.valid("param").name)),
  );

  r.delete(
    "/:name",
    requirePermission("node:manage"),
    validate("param", NameParam),
    validate("query", NodeDeleteQuerySchema),
    async (c) => {
      await deleteNode(ctx, c.req.valid("param").name, c.req.valid("query").force);
      return c.body(null, 204);
    },
  );

  r.get("/:name", requirePermission("node:read"), validate("param", NameParam), async (c) => {
    const { name } = c.req.valid("param");
    const node = await getNode(ctx, name);
    const full = can(c.get("user").role, "node:manage");
    return c.json(nodeView(node, (await nodeUsageOf(ctx))(name), full, ctx.liveness?.get(name)));
  });

  return r;
}
