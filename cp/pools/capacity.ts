/**
 * Effective capacity of a pool instance (spec 001 "VM placement scheduler": the
 * pool_effective_capacity view "with pending-disk subtraction"): the free bytes last reported
 * (heartbeat or scan) minus the full size (`disk_gib` GiB) of every VM placed in the instance
 * that no scan has observed yet. A VM is observed when the last scan was sent after the VM
 * was recorded and found its disk; a VM recorded after the scan was sent, or whose disk the
 * scan did not find (still downloading), is pending. Before the first scan every VM placed
 * there is pending.
 *
 * The scheduler is to use {@link poolCapacity}`(pool, vms).effective_available_bytes` as the
 * instance's free disk.
 *
 * @module
 */
import type { CpContext } from "../context.ts";
import { keys, type PoolRecord, type VmRecord } from "../repo/records.ts";
import { rangeAll } from "../store/store.ts";

/** Bytes per GiB (`disk_gib` is in GiB). */
export const GIB = 1024 ** 3;

/** An instance's capacity figures, bytes. */
export interface PoolCapacity {
  /** Free bytes last reported (null: never reported). */
  available_bytes: number | null;
  /** Bytes of the VM disks placed here but not yet observed by a scan. */
  pending_vm_disk_bytes: number;
  /** `available_bytes - pending_vm_disk_bytes`, at least 0 (null with `available_bytes`). */
  effective_available_bytes: number | null;
}

/** True when VM `vm` (placed in `pool`) was observed by the pool's last scan. */
export function isObservedByScan(pool: PoolRecord, vm: VmRecord): boolean {
  const scan = pool.last_scan;
  if (!scan) return false;
  if (Date.parse(vm.created_at) > Date.parse(scan.started_at)) return false;
  return !scan.unobserved_vm_ids.includes(vm.id);
}

/** True when `vm` is placed in pool instance `pool` (same pool name and node). */
export function inPool(pool: PoolRecord, vm: VmRecord): boolean {
  return vm.pool === pool.name && vm.node === pool.node;
}

/**
 * The capacity of `pool` given `vms` (any VMs: those not placed in the instance are ignored).
 * Pure.
 */
export function poolCapacity(pool: PoolRecord, vms: readonly VmRecord[]): PoolCapacity {
  let pending = 0;
  for (const vm of vms) {
    if (inPool(pool, vm) && !isObservedByScan(pool, vm)) pending += vm.disk_gib * GIB;
  }
  return {
    available_bytes: pool.available_bytes,
    pending_vm_disk_bytes: pending,
    effective_available_bytes: pool.available_bytes === null
      ? null
      : Math.max(0, pool.available_bytes - pending),
  };
}

/**
 * A lookup of the VMs placed in a pool instance: from the VM informer's node index when the
 * caches are wired (no store read), else from one scan of the VMs taken now.
 */
export async function poolVmsLookup(
  ctx: CpContext,
): Promise<(pool: PoolRecord) => VmRecord[]> {
  const cache = ctx.cache?.vms;
  if (cache) {
    return (pool) =>
      cache.byIndex("node", pool.node).map((k) => cache.get(k))
        .filter((v): v is VmRecord => !!v && inPool(pool, v));
  }
  const all = (await rangeAll<VmRecord>(ctx.store, keys.vms)).map((kv) => kv.value);
  return (pool) => all.filter((v) => inPool(pool, v));
}
