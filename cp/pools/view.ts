/**
 * The public views of pools (shared/api/pools.ts): one instance, and a pool name with all its
 * instances.
 *
 * @module
 */
import type { Pool, PoolInstanceView } from "../../shared/api/pools.ts";
import type { PoolRecord, VmRecord } from "../repo/records.ts";
import { poolCapacity } from "./capacity.ts";

/**
 * The public view of instance `p`: `defaultPool` is the cluster default pool name (null:
 * none); `vms` the VMs placed in it (for the effective capacity; others are ignored).
 */
export function poolInstanceView(
  p: PoolRecord,
  defaultPool: string | null,
  vms: readonly VmRecord[],
): PoolInstanceView {
  const cap = poolCapacity(p, vms);
  const scan = p.last_scan ?? null;
  return {
    id: p.id,
    name: p.name,
    node: p.node,
    type: p.type,
    path: p.path,
    status: p.status,
    message: p.message,
    total_bytes: p.total_bytes,
    available_bytes: p.available_bytes,
    images: p.images,
    images_total: p.images_total ?? p.images.length,
    is_default: defaultPool !== null && p.name === defaultPool,
    effective_available_bytes: cap.effective_available_bytes,
    pending_vm_disk_bytes: cap.pending_vm_disk_bytes,
    pressure: p.pressure ?? null,
    last_scan: scan && {
      scanned_at: scan.scanned_at,
      total_bytes: scan.total_bytes,
      available_bytes: scan.available_bytes,
      vm_disk_bytes: scan.vm_disk_bytes,
      vm_disk_count: scan.vm_disk_count,
      image_bytes: scan.image_bytes,
      image_count: scan.image_count,
    },
    last_scan_error: p.last_scan_error ?? null,
    created_at: p.created_at,
    updated_at: p.updated_at,
  };
}

/** The aggregated view of pool `name` from its instance views (sorted by node name here). */
export function poolView(
  name: string,
  instances: PoolInstanceView[],
  defaultPool: string | null,
): Pool {
  return {
    name,
    type: instances[0]?.type ?? "local_dir",
    is_cluster_default: defaultPool === name,
    instances: [...instances].sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0)),
  };
}
