/**
 * Placing a VM (spec 001 "VM placement scheduler"): gathers the candidates of a pool from the
 * informer caches (nodes, pool instances by name, node allocations), asks the scheduler
 * (cp/scheduler.ts), and records the VM together with its node's allocation in one store
 * transaction guarded by the allocation's revision. The caches may lag; the transaction does
 * not: a placement is re-checked against the allocation as stored, and a conflicting
 * placement on the same node retries with fresh figures. Nothing here scans every VM or node
 * record of the store.
 *
 * @module
 */
import type { CpContext } from "../context.ts";
import {
  type Allocation,
  type Candidate,
  decide,
  type Decision,
  noEligibleNodesError,
  type PlacementRequest,
  type PlacementSettings,
} from "../scheduler.ts";
import { ApiError } from "../../shared/errors.ts";
import { keys, type NodeRecord, type PoolRecord, type VmRecord } from "../repo/records.ts";
import { type Compare, type KeyValue, type Op, rangeAll } from "../store/store.ts";
import {
  allocateWrite,
  emptyAllocation,
  type NodeAllocation,
  pendingDiskBytes,
  readAllocation,
} from "./allocations.ts";

/** The scheduler settings of the api config. */
export function placementSettings(ctx: CpContext): PlacementSettings {
  return { algorithm: ctx.cfg.placement.algorithm, resources: ctx.cfg.placement.resources };
}

/** The instances of pool `name` (pool informer's `name` index when wired). */
async function instancesOf(ctx: CpContext, name: string): Promise<PoolRecord[]> {
  const cache = ctx.cache?.pools;
  if (cache) {
    return cache.byIndex("name", name).map((k) => cache.get(k)).filter((p): p is PoolRecord => !!p);
  }
  return (await rangeAll<PoolRecord>(ctx.store, keys.poolsNamed(name))).map((kv) => kv.value);
}

async function nodeOf(ctx: CpContext, name: string): Promise<NodeRecord | undefined> {
  const cache = ctx.cache?.nodes;
  if (cache) return cache.get(keys.node(name));
  return (await ctx.store.get<NodeRecord>(keys.node(name)))?.value;
}

async function allocationOf(ctx: CpContext, node: string): Promise<NodeAllocation> {
  const cache = ctx.cache?.allocations;
  const a = cache ? cache.get(keys.nodeAllocation(node)) : (await readAllocation(ctx, node))?.value;
  return a ?? emptyAllocation("");
}

/** `a`'s figures the scheduler reads. */
function allocationFigures(a: NodeAllocation): Allocation {
  return { vms: a.vms, vcpus: a.vcpus, memory_mib: a.memory_mib };
}

/** The scheduler's view of one instance, given its node's allocation. */
function candidateOf(
  pool: PoolRecord,
  node: NodeRecord | undefined,
  a: NodeAllocation,
): Candidate {
  return {
    node,
    pool,
    allocation: allocationFigures(a),
    diskAvailableBytes: pool.available_bytes === null
      ? null
      : Math.max(0, pool.available_bytes - pendingDiskBytes(a, pool)),
    poolUnderPressure: pool.pressure?.disk?.under_pressure === true,
  };
}

/**
 * The candidates for `req`: every instance of `req.pool` (only the one on `req.node` when
 * hinted).
 *
 * @throws ApiError `pool_not_found` (no instance anywhere), `node_not_found` (the hint names no
 *   node), `pool_not_on_node` (the hinted node has no instance of the pool)
 */
export async function candidatesFor(
  ctx: CpContext,
  req: PlacementRequest,
  fresh: ReadonlyMap<string, NodeAllocation> = new Map(),
): Promise<Candidate[]> {
  const instances = await instancesOf(ctx, req.pool);
  if (instances.length === 0) {
    throw new ApiError("pool_not_found", `pool "${req.pool}" does not exist on any node`, {
      pool: req.pool,
    });
  }
  let chosen = instances;
  if (req.node !== undefined) {
    if (!(await nodeOf(ctx, req.node))) {
      throw new ApiError("node_not_found", `node "${req.node}" not found`, { node: req.node });
    }
    chosen = instances.filter((p) => p.node === req.node);
    if (chosen.length === 0) {
      throw new ApiError(
        "pool_not_on_node",
        `pool "${req.pool}" has no instance on node "${req.node}"`,
        { pool: req.pool, node: req.node, pool_nodes: instances.map((p) => p.node).sort() },
      );
    }
  }
  const out: Candidate[] = [];
  for (const pool of chosen) {
    const a = fresh.get(pool.node) ?? await allocationOf(ctx, pool.node);
    out.push(candidateOf(pool, await nodeOf(ctx, pool.node), a));
  }
  return out;
}

/**
 * The decision for `req` with every candidate explained (`vm create --dry-run`); nothing is
 * written.
 *
 * @throws ApiError as {@link candidatesFor}
 */
export async function dryRunPlacement(ctx: CpContext, req: PlacementRequest): Promise<Decision> {
  return decide(req, await candidatesFor(ctx, req), placementSettings(ctx), true);
}

/**
 * A hook into the transaction that records a placed VM (e.g. IPAM, cp/networks/ipam.ts):
 * given the placed record, returns the record to write (it may add fields) and its own
 * guarded writes. Called once per attempt, so it must read what it guards afresh; its
 * errors abort the create.
 */
export type RecordHook = (
  vm: VmRecord,
) => Promise<{ vm: VmRecord; compare: Compare[]; ops: Op[] }>;

/**
 * Places `vm` (its `node`, `pool_path` are filled in here) and commits it with `ops` (the task
 * enqueue) and the `hook`'s writes in one transaction that also requires the VM name to be
 * free.
 *
 * @returns the VM as recorded
 * @throws ApiError as {@link candidatesFor}, `no_eligible_nodes` (details: `reason`,
 *   `node_utilization`, `candidates`), `vm_already_exists`, or the hook's
 */
export async function placeAndRecord(
  ctx: CpContext,
  req: PlacementRequest,
  vm: Omit<VmRecord, "node" | "pool_path">,
  opsFor: (vm: VmRecord) => Op[],
  hook?: RecordHook,
): Promise<VmRecord> {
  const settings = placementSettings(ctx);
  const fresh = new Map<string, NodeAllocation>();
  for (let attempt = 0; attempt < 20; attempt++) {
    const candidates = await candidatesFor(ctx, req, fresh);
    const d = decide(req, candidates, settings);
    if (!d.winner) throw noEligibleNodesError(req, decide(req, candidates, settings, true));
    const winner = d.winner;
    // Re-check against the allocation as stored (the cache may lag).
    const stored = await readAllocation(ctx, winner.pool.node);
    const current = stored?.value ?? emptyAllocation("");
    if (!sameFigures(candidateOf(winner.pool, winner.node, current), winner)) {
      fresh.set(winner.pool.node, current);
      continue;
    }
    const placed: VmRecord = { ...vm, node: winner.pool.node, pool_path: winner.pool.path };
    const extra = hook ? await hook(placed) : { vm: placed, compare: [], ops: [] };
    const record = extra.vm;
    const poolsOnNode = new Map(
      candidates.filter((c) => c.pool.node === record.node).map((c) => [c.pool.name, c.pool]),
    );
    const alloc = allocateWrite(
      stored as KeyValue<NodeAllocation> | null,
      record,
      (name) => poolsOnNode.get(name),
      ctx.now().toISOString(),
    );
    const res = await ctx.store.txn({
      compare: [
        { key: keys.vm(record.name), absent: true },
        // A pool instance deleted meanwhile aborts the create (pool delete guards the other
        // direction through this node's allocation).
        { key: keys.pool(record.pool, record.node), absent: false },
        ...alloc.compare,
        ...extra.compare,
      ],
      success: [
        { type: "put", key: keys.vm(record.name), value: record },
        ...alloc.ops,
        ...opsFor(
          record,
        ),
        ...extra.ops,
      ],
    });
    if (res.succeeded) return record;
    if (await ctx.store.get(keys.vm(record.name))) {
      throw new ApiError("vm_already_exists", `vm "${record.name}" already exists`);
    }
    fresh.delete(winner.pool.node); // re-read next time
    const again = await readAllocation(ctx, winner.pool.node);
    fresh.set(winner.pool.node, again?.value ?? emptyAllocation(""));
  }
  throw new ApiError("internal_error", "placement: too many concurrent placements; retry");
}

/** True when a candidate built from the stored allocation is the one the decision used. */
function sameFigures(stored: Candidate, used: Candidate): boolean {
  const a = stored.allocation, b = used.allocation;
  return a.vms === b.vms && a.vcpus === b.vcpus && a.memory_mib === b.memory_mib &&
    stored.diskAvailableBytes === used.diskAvailableBytes;
}

/** Why overcommitting each resource is risky (the startup Warn lines, spec 001). */
const OVERCOMMIT_RISK = {
  cpu: "CPU contention: vCPUs share cores under load",
  memory: "OOM kill risk under memory pressure",
  disk: "ENOSPC risk: thin-provisioned disks may fill the pool",
} as const;

/**
 * Logs the placement settings worth a reminder on every start (spec 001): one Warn line per
 * resource whose `overcommit_ratio` is above 1, e.g. `placement.resources.memory.
 * overcommit_ratio=1.50 — overcommit enabled (OOM kill risk under memory pressure); see
 * docs/scheduler-configuration.md`, and one when every resource check is disabled.
 */
export function logPlacementSettings(ctx: CpContext): void {
  const r = ctx.cfg.placement.resources;
  for (const kind of ["cpu", "memory", "disk"] as const) {
    if (r[kind].enabled && r[kind].overcommit_ratio > 1) {
      ctx.log.warn(
        `placement.resources.${kind}.overcommit_ratio=${r[kind].overcommit_ratio.toFixed(2)} ` +
          `— overcommit enabled (${OVERCOMMIT_RISK[kind]}); see docs/scheduler-configuration.md`,
      );
    }
  }
  if (!r.cpu.enabled && !r.memory.enabled && !r.disk.enabled) {
    ctx.log.warn(
      "placement.resources: cpu, memory and disk checks all disabled — placement ignores " +
        "capacity and VMs may land on nodes that cannot hold them; see " +
        "docs/scheduler-configuration.md",
    );
  }
}
