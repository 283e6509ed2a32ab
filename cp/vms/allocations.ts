/**
 * Per-node allocations (`/node-allocations/<node>`): what the VMs placed on a node hold
 * (count, vCPUs, memory MiB) and the root disks placed there that no pool scan has observed
 * yet. Written in the same store transaction that records or removes a VM, guarded by the
 * allocation's revision, so concurrent creates serialize per node and never overcommit it
 * (issue "capacity-aware placement"); placement reads one small record per candidate instead of
 * every VM of the cluster.
 *
 * Pending disks: a VM's root disk counts against its pool instance's free space from placement
 * until a scan observes it (cp/pools/capacity.ts `isObservedByScan`: the scan was sent after the
 * VM was recorded and found its disk). Observed entries are pruned on the next write.
 *
 * @module
 */
import type { CpContext } from "../context.ts";
import { isObservedByScan } from "../pools/capacity.ts";
import { keys, type PoolRecord, type VmRecord } from "../repo/records.ts";
import { type Compare, type KeyValue, type Op, rangeAll } from "../store/store.ts";

/** Bytes per GiB (`disk_gib` is in GiB). */
const GIB = 1024 ** 3;

/** A root disk placed on the node and not yet observed by a scan of its pool instance. */
export interface PendingDisk {
  pool: string;
  /** The disk's full size, bytes. */
  bytes: number;
  /** When the VM was recorded (the VM's `created_at`). */
  placed_at: string;
}

/** A node's allocation (`/node-allocations/<node>`). */
export interface NodeAllocation {
  vms: number;
  vcpus: number;
  memory_mib: number;
  /** VM id → its pending root disk. */
  pending_disks: Record<string, PendingDisk>;
  updated_at: string;
}

/** The allocation of a node without VMs. */
export function emptyAllocation(ts: string): NodeAllocation {
  return { vms: 0, vcpus: 0, memory_mib: 0, pending_disks: {}, updated_at: ts };
}

/**
 * Bytes of the root disks placed in pool instance `pool` that its last scan has not observed.
 */
export function pendingDiskBytes(a: NodeAllocation, pool: PoolRecord): number {
  let sum = 0;
  for (const [id, d] of Object.entries(a.pending_disks)) {
    if (d.pool !== pool.name) continue;
    if (!isObservedByScan(pool, { id, created_at: d.placed_at } as VmRecord)) sum += d.bytes;
  }
  return sum;
}

/** `a` without the pending disks their pool instances' scans have observed. */
function pruned(
  a: NodeAllocation,
  poolOf: (name: string) => PoolRecord | undefined,
): Record<string, PendingDisk> {
  const out: Record<string, PendingDisk> = {};
  for (const [id, d] of Object.entries(a.pending_disks)) {
    const pool = poolOf(d.pool);
    if (pool && isObservedByScan(pool, { id, created_at: d.placed_at } as VmRecord)) continue;
    out[id] = d;
  }
  return out;
}

/** A guarded write of one allocation, to add to the transaction that records the VM change. */
export interface AllocationWrite {
  compare: Compare[];
  ops: Op[];
}

/** Reads a node's allocation with its revision (null: none yet). */
export async function readAllocation(
  ctx: CpContext,
  node: string,
): Promise<KeyValue<NodeAllocation> | null> {
  return await ctx.store.get<NodeAllocation>(keys.nodeAllocation(node));
}

/**
 * The write that adds `vm` (just placed) to its node's allocation `cur` (null: none yet).
 * `poolOf` looks up the node's pool instances by name (pruning observed pending disks).
 */
export function allocateWrite(
  cur: KeyValue<NodeAllocation> | null,
  vm: VmRecord,
  poolOf: (name: string) => PoolRecord | undefined,
  ts: string,
): AllocationWrite {
  const key = keys.nodeAllocation(vm.node);
  const a = cur?.value ?? emptyAllocation(ts);
  const next: NodeAllocation = {
    vms: a.vms + 1,
    vcpus: a.vcpus + vm.vcpus,
    memory_mib: a.memory_mib + vm.memory_mb,
    pending_disks: {
      ...pruned(a, poolOf),
      [vm.id]: { pool: vm.pool, bytes: vm.disk_gib * GIB, placed_at: vm.created_at },
    },
    updated_at: ts,
  };
  return {
    compare: [cur ? { key, modRevision: cur.modRevision } : { key, absent: true }],
    ops: [{ type: "put", key, value: next }],
  };
}

/**
 * The write that removes `vm` (its record is being deleted) from its node's allocation `cur`
 * (null: none). A `lost` VM holds nothing (its node was deleted with `--force`, and with it
 * the allocation; a node joining again under that name starts from zero).
 */
export function releaseWrite(
  cur: KeyValue<NodeAllocation> | null,
  vm: VmRecord,
  ts: string,
): AllocationWrite {
  if (vm.status === "lost") return { compare: [], ops: [] };
  if (!cur) return { compare: [{ key: keys.nodeAllocation(vm.node), absent: true }], ops: [] };
  const a = cur.value;
  const { [vm.id]: _gone, ...pending } = a.pending_disks;
  const next: NodeAllocation = {
    vms: Math.max(0, a.vms - 1),
    vcpus: Math.max(0, a.vcpus - vm.vcpus),
    memory_mib: Math.max(0, a.memory_mib - vm.memory_mb),
    pending_disks: pending,
    updated_at: ts,
  };
  return {
    compare: [{ key: cur.key, modRevision: cur.modRevision }],
    ops: [{ type: "put", key: cur.key, value: next }],
  };
}

/**
 * Creates the allocation of every node that has VMs but no allocation record (VMs recorded
 * before allocations existed), from the VM records. Run once at startup, before the API
 * serves creates. Returns the nodes seeded.
 */
export async function seedAllocations(ctx: CpContext): Promise<string[]> {
  const byNode = new Map<string, VmRecord[]>();
  for (const kv of await rangeAll<VmRecord>(ctx.store, keys.vms)) {
    const list = byNode.get(kv.value.node) ?? [];
    list.push(kv.value);
    byNode.set(kv.value.node, list);
  }
  const seeded: string[] = [];
  const ts = ctx.now().toISOString();
  for (const [node, vms] of byNode) {
    const key = keys.nodeAllocation(node);
    const a: NodeAllocation = emptyAllocation(ts);
    for (const vm of vms) {
      if (vm.status === "lost") continue;
      a.vms++;
      a.vcpus += vm.vcpus;
      a.memory_mib += vm.memory_mb;
      a.pending_disks[vm.id] = {
        pool: vm.pool,
        bytes: vm.disk_gib * GIB,
        placed_at: vm.created_at,
      };
    }
    const res = await ctx.store.txn({
      compare: [{ key, absent: true }],
      success: [{ type: "put", key, value: a }],
    });
    if (res.succeeded) seeded.push(node);
  }
  if (seeded.length) ctx.log.info("node allocations seeded from VM records", { nodes: seeded });
  return seeded;
}
