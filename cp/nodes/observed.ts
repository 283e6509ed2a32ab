/**
 * The VMs each agent reports, one store key per VM: `/observed-vms/<node>/<vm id>` →
 * {@link ObservedVm}. Kept out of the node record so that a node hosting thousands of VMs never
 * pushes one value past the store's value limit (`MAX_VALUE_BYTES`, 360 KB), and so that a
 * change to one VM writes one small key instead of the whole list.
 *
 * Heartbeats and reports carry the complete set; {@link recordObservedVms} writes only the
 * difference against what is stored (read from the informer cache when wired), in
 * transactions of at most {@link OBSERVED_BATCH_OPS} operations (etcd's default
 * `--max-txn-ops` is 128). Level-triggered: a difference missed because the cache lagged is
 * written on the next heartbeat.
 *
 * @module
 */
import type { ObservedVm } from "../../shared/api/vm_runtime.ts";
import type { CpContext } from "../context.ts";
import { keys } from "../repo/records.ts";
import { type Op, rangeAll } from "../store/store.ts";

/** Most operations one write of observed VMs puts in a transaction. */
export const OBSERVED_BATCH_OPS = 100;

/** The stored observed VMs of `node`, keyed by VM id (informer cache when wired). */
export async function observedVmsOf(
  ctx: CpContext,
  node: string,
): Promise<Map<string, ObservedVm>> {
  const out = new Map<string, ObservedVm>();
  const cache = ctx.cache?.observed;
  if (cache) {
    for (const key of cache.byIndex("node", node)) {
      const v = cache.get(key);
      if (v) out.set(v.id, v);
    }
    return out;
  }
  for (const kv of await rangeAll<ObservedVm>(ctx.store, keys.observedVmsOf(node))) {
    out.set(kv.value.id, kv.value);
  }
  return out;
}

/** What `node`'s agent last reported of VM `id`; undefined when it does not report it. */
export async function observedVm(
  ctx: CpContext,
  node: string,
  id: string,
): Promise<ObservedVm | undefined> {
  const key = keys.observedVm(node, id);
  const cache = ctx.cache?.observed;
  if (cache) return cache.get(key);
  return (await ctx.store.get<ObservedVm>(key))?.value;
}

/**
 * Makes the stored observed VMs of `node` equal `vms` (the agent's complete set): puts the new
 * and changed ones, deletes the ones no longer reported.
 *
 * @returns the number of keys written (puts + deletes)
 */
export async function recordObservedVms(
  ctx: CpContext,
  node: string,
  vms: ObservedVm[],
): Promise<number> {
  const stored = await observedVmsOf(ctx, node);
  const ops: Op[] = [];
  const reported = new Set<string>();
  for (const vm of vms) {
    reported.add(vm.id);
    const cur = stored.get(vm.id);
    if (cur && sameObservedVm(cur, vm)) continue;
    ops.push({ type: "put", key: keys.observedVm(node, vm.id), value: vm });
  }
  for (const id of stored.keys()) {
    if (!reported.has(id)) ops.push({ type: "delete", key: keys.observedVm(node, id) });
  }
  for (let i = 0; i < ops.length; i += OBSERVED_BATCH_OPS) {
    await ctx.store.txn({ compare: [], success: ops.slice(i, i + OBSERVED_BATCH_OPS) });
  }
  return ops.length;
}

/** Deletes every observed VM of `node` (the node was deleted). */
export async function forgetObservedVms(ctx: CpContext, node: string): Promise<void> {
  const stored = await rangeAll<ObservedVm>(ctx.store, keys.observedVmsOf(node));
  for (let i = 0; i < stored.length; i += OBSERVED_BATCH_OPS) {
    await ctx.store.txn({
      compare: [],
      success: stored.slice(i, i + OBSERVED_BATCH_OPS).map((kv) => ({
        type: "delete" as const,
        key: kv.key,
      })),
    });
  }
}

/** True when two observations of one VM are equal. */
function sameObservedVm(a: ObservedVm, b: ObservedVm): boolean {
  return a.name === b.name && a.phase === b.phase && a.pid === b.pid &&
    JSON.stringify(a.exit) === JSON.stringify(b.exit) &&
    JSON.stringify(a.cloud_init) === JSON.stringify(b.cloud_init) &&
    JSON.stringify(a.nic_addresses) === JSON.stringify(b.nic_addresses);
}
