/**
 * Node capacity figures for heartbeats (shared/api/nodes.ts `NodeResources`; spec: developer
 * guide "Node-pressure detection" — the system disk is the root filesystem).
 *
 * Needs `--allow-sys=systemMemoryInfo,loadavg,statfs`. When `statfs("/")` is denied by the
 * sandbox, the state directory's filesystem is reported instead.
 *
 * @module
 */
import type { NodeResources } from "../shared/api/nodes.ts";
import { type FsFigures, fsFigures } from "./pools.ts";

const MIB = 1024 * 1024;

/** Figures of the system disk: `/`, or `fallbackPath` when `/` cannot be read. */
export function systemDisk(fallbackPath: string): FsFigures {
  try {
    return fsFigures("/");
  } catch {
    try {
      return fsFigures(fallbackPath);
    } catch {
      return { total_bytes: 0, available_bytes: 0 };
    }
  }
}

/** The node's current resources (memory in MiB, disk in bytes, load average of 1 min). */
export function nodeResources(stateDir: string): NodeResources {
  let memTotal = 0;
  let memAvail = 0;
  try {
    const m = Deno.systemMemoryInfo();
    memTotal = Math.floor(m.total / MIB);
    memAvail = Math.floor(m.available / MIB);
  } catch {
    // not permitted: report zeros
  }
  let load = 0;
  try {
    load = Deno.loadavg()[0];
  } catch {
    // not permitted
  }
  const disk = systemDisk(stateDir);
  return {
    cpu_cores_total: navigator.hardwareConcurrency ?? 0,
    load_average_1m: Math.max(0, load),
    memory_total_mib: memTotal,
    memory_available_mib: memAvail,
    system_disk_total_bytes: disk.total_bytes,
    system_disk_available_bytes: disk.available_bytes,
  };
}

/** The host name, or `localhost` when it cannot be read. */
export function hostName(): string {
  try {
    return Deno.hostname();
  } catch {
    return "localhost";
  }
}
