/**
 * The pool provisioner (on the controller scaffold, keyed by node name): every `ready` node
 * gets an instance of `storage_pools.default_pool_name` at `<pools_dir>/<name>` if that path
 * passes the allowed-path gate (else one warning per node and path, nothing provisioned), and
 * the agent is told its desired pools at once (`PUT /v1/pools`, best effort: heartbeats carry
 * them too). The cluster default pool setting itself is seeded at startup.
 *
 * @module
 */
import type { CpContext } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { nodePools } from "../nodes/service.ts";
import { keys, type NodeRecord, type PoolRecord } from "../repo/records.ts";
import { checkPoolPath, joinPoolPath } from "./paths.ts";

/** Builds the pool provisioner; the caller feeds it from the node informer and starts it. */
export function poolProvisioner(ctx: CpContext): Controller {
  const warned = new Set<string>();
  return new Controller({
    name: "pool",
    log: ctx.log,
    reconcile: async (nodeName) => {
      const node = (await ctx.store.get<NodeRecord>(keys.node(nodeName)))?.value;
      if (!node || node.status !== "ready" || !node.pools_dir) return;
      const name = ctx.cfg.storage_pools.default_pool_name;
      const key = keys.pool(name, node.name);
      if (await ctx.store.get(key)) return;
      const path = joinPoolPath(node.pools_dir, name);
      const check = checkPoolPath(path, ctx.cfg.storage_pools.allowed_path_prefixes);
      if (!check.ok) {
        const k = `${node.name}\0${path}`;
        if (!warned.has(k)) {
          warned.add(k);
          ctx.log.warn("default pool not provisioned: path_not_allowed", {
            node: node.name,
            pool: name,
            path,
            reason: check.reason,
          });
        }
        return;
      }
      const ts = ctx.now().toISOString();
      const pool: PoolRecord = {
        id: crypto.randomUUID(),
        name,
        node: node.name,
        type: "local_dir",
        path,
        status: "pending",
        message: null,
        total_bytes: null,
        available_bytes: null,
        images: [],
        created_at: ts,
        updated_at: ts,
      };
      const res = await ctx.store.txn({
        compare: [{ key, absent: true }],
        success: [{ type: "put", key, value: pool }],
      });
      if (!res.succeeded) return;
      ctx.log.info("default pool provisioned", { node: node.name, pool: name, path });
      if (!node.endpoint) return;
      const desired = (await nodePools(ctx, node.name)).map((kv) => kv.value);
      if (!desired.some((p) => p.id === pool.id)) desired.push(pool);
      try {
        await ctx.agents.putPools(
          { name: node.name, endpoint: node.endpoint },
          desired.map((p) => ({ name: p.name, path: p.path })),
        );
      } catch (e) {
        ctx.log.debug("cannot push pools to the agent; its next heartbeat brings them", {
          node: node.name,
          err: e,
        });
      }
    },
  });
}
