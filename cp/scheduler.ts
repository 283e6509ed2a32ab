/**
 * VM placement (spec 001 "VM placement scheduler"): a pure decision over candidate (node,
 * pool instance) pairs. The caller gathers the candidates (cp/vms/placement.ts) and records
 * the decision together with the node's allocation in one store transaction.
 *
 * Filters, in order (a candidate failing any is not eligible; each failure is reported):
 * 1. `node_ready`: the node is registered and `ready`;
 * 2. `not_cordoned`;
 * 3. `no_node_pressure`: no `memory` / `system_disk` pressure (cp/nodes/pressure.ts);
 * 4. `architecture`: the node's architecture is the VM's;
 * 5. `pool_ready`: the pool instance on the node is `ready`;
 * 6. `no_pool_pressure`: the instance is not under `disk` pressure;
 * 7. `cpu_fit`, `memory_fit`, `disk_fit`: for each resource enabled under
 *    `placement.resources.<r>`, what the node's placed VMs hold plus the request fits in
 *    total × `overcommit_ratio` (vCPUs against cores, MiB against memory, disk bytes against
 *    the pool's filesystem, whose "used" is total − effective free: cp/pools/capacity.ts).
 *
 * Scoring among the eligible: `resource_aware` is Kubernetes' LeastAllocated over CPU and
 * memory (each enabled resource scores `100 × free fraction after placement`, averaged; a
 * higher score, i.e. lower post-placement utilisation, wins); `least_vm_count` prefers the
 * node with the fewest VMs. Ties break by node name, lowercase lexicographic.
 *
 * Cost: one pass over the candidates with no allocation per candidate; the per-candidate
 * explanation (filters, utilisation) is only built for `--dry-run` and for the 409 payload.
 *
 * @module
 */
import type { Architecture } from "../shared/api/common.ts";
import {
  type NodeUtilization,
  type PlacementAlgorithm,
  PlacementAlgorithmSchema,
  type PlacementFilter,
  type PlacementVerdict,
} from "../shared/api/placement.ts";
import { ApiError } from "../shared/errors.ts";
import type { NodeRecord, PoolRecord } from "./repo/records.ts";

/** Placement algorithms (`placement.algorithm`). */
export const PLACEMENT_ALGORITHMS = PlacementAlgorithmSchema.options;

/** One resource's placement setting (`placement.resources.<cpu|memory|disk>`). */
export interface ResourceSetting {
  /** Check that the resource fits (false: ignore it for fit and scoring). */
  enabled: boolean;
  /** Capacity multiplier: 1 is strict, 1.5 admits 150 % of the capacity. */
  overcommit_ratio: number;
}

/** The scheduler's settings (`placement.*` of the api config). */
export interface PlacementSettings {
  algorithm: PlacementAlgorithm;
  resources: { cpu: ResourceSetting; memory: ResourceSetting; disk: ResourceSetting };
}

/** What the VMs placed on a node hold (`/node-allocations/<node>`, cp/vms/allocations.ts). */
export interface Allocation {
  vms: number;
  vcpus: number;
  memory_mib: number;
}

/** One (node, pool instance) pair to consider. */
export interface Candidate {
  /** The pool instance's node (undefined: an instance whose node has no record). */
  node: NodeRecord | undefined;
  pool: PoolRecord;
  allocation: Allocation;
  /** The instance's effective free bytes (free minus pending VM disks); null: unknown. */
  diskAvailableBytes: number | null;
  /** The instance is under `disk` pressure. */
  poolUnderPressure: boolean;
}

/** What to place. */
export interface PlacementRequest {
  pool: string;
  architecture: Architecture;
  /** Placement hint: exactly this node. */
  node?: string;
  vcpus: number;
  memory_mib: number;
  /** The root disk, bytes. */
  disk_bytes: number;
}

type FilterName = PlacementFilter;
type Utilization = NodeUtilization;
type Verdict = PlacementVerdict;

/** A placement decision: the winner (null: none) and, when explained, every verdict. */
export interface Decision {
  algorithm: PlacementAlgorithm;
  winner: Candidate | null;
  /** Sorted by node name; empty unless `explain` (or no winner). */
  verdicts: Verdict[];
}

const RESOURCE_FILTERS: ReadonlySet<FilterName> = new Set(["cpu_fit", "memory_fit", "disk_fit"]);
const PRESSURE_FILTERS: ReadonlySet<FilterName> = new Set([
  "no_node_pressure",
  "no_pool_pressure",
]);

/** The first failing filter of `c`, or null when it is eligible (the hot path). */
function firstFailure(
  c: Candidate,
  req: PlacementRequest,
  s: PlacementSettings,
): FilterName | null {
  const n = c.node;
  if (!n || n.status !== "ready") return "node_ready";
  if (n.cordoned) return "not_cordoned";
  const p = n.pressure;
  if (p && (p.memory.under_pressure || p.system_disk.under_pressure)) return "no_node_pressure";
  if (n.architecture !== req.architecture) return "architecture";
  if (c.pool.status !== "ready") return "pool_ready";
  if (c.poolUnderPressure) return "no_pool_pressure";
  const r = s.resources;
  const cores = n.resources?.cpu_cores_total ?? 0;
  if (r.cpu.enabled && c.allocation.vcpus + req.vcpus > cores * r.cpu.overcommit_ratio) {
    return "cpu_fit";
  }
  const mem = n.resources?.memory_total_mib ?? 0;
  if (
    r.memory.enabled && c.allocation.memory_mib + req.memory_mib > mem * r.memory.overcommit_ratio
  ) {
    return "memory_fit";
  }
  if (r.disk.enabled && !diskFits(c, req, r.disk)) return "disk_fit";
  return null;
}

function diskFits(c: Candidate, req: PlacementRequest, d: ResourceSetting): boolean {
  const total = c.pool.total_bytes;
  if (total === null || c.diskAvailableBytes === null) return false;
  const used = Math.max(0, total - c.diskAvailableBytes);
  return used + req.disk_bytes <= total * d.overcommit_ratio;
}

/** The score of an eligible candidate (higher wins). */
function scoreOf(c: Candidate, req: PlacementRequest, s: PlacementSettings): number {
  if (s.algorithm === "least_vm_count") return -c.allocation.vms;
  const r = s.resources;
  let sum = 0;
  let parts = 0;
  if (r.cpu.enabled) {
    const cap = (c.node!.resources?.cpu_cores_total ?? 0) * r.cpu.overcommit_ratio;
    sum += cap > 0 ? Math.max(0, cap - c.allocation.vcpus - req.vcpus) / cap : 0;
    parts++;
  }
  if (r.memory.enabled) {
    const cap = (c.node!.resources?.memory_total_mib ?? 0) * r.memory.overcommit_ratio;
    sum += cap > 0 ? Math.max(0, cap - c.allocation.memory_mib - req.memory_mib) / cap : 0;
    parts++;
  }
  return parts === 0 ? 0 : Math.round((sum / parts) * 100 * 1000) / 1000;
}

/** Lowercase lexicographic order of node names (the spec's tie-break). */
export function compareNodeNames(a: string, b: string): number {
  const x = a.toLowerCase(), y = b.toLowerCase();
  return x < y ? -1 : x > y ? 1 : 0;
}

/** `c`'s utilisation before the placement. */
function utilizationOf(c: Candidate): Utilization {
  const total = c.pool.total_bytes;
  return {
    node: c.pool.node,
    pool: c.pool.name,
    cpu_used: c.allocation.vcpus,
    cpu_total: c.node?.resources?.cpu_cores_total ?? 0,
    memory_used_mib: c.allocation.memory_mib,
    memory_total_mib: c.node?.resources?.memory_total_mib ?? 0,
    disk_used_bytes: total === null || c.diskAvailableBytes === null
      ? null
      : Math.max(0, total - c.diskAvailableBytes),
    disk_total_bytes: total,
    vm_count: c.allocation.vms,
  };
}

const GIB = 1024 ** 3;
const gib = (b: number) => `${(b / GIB).toFixed(1)} GiB`;

/** Every filter's outcome for `c`, with details a person can act on. */
function explainFilters(
  c: Candidate,
  req: PlacementRequest,
  s: PlacementSettings,
): Verdict["filters"] {
  const n = c.node;
  const u = utilizationOf(c);
  const r = s.resources;
  const ratio = (x: ResourceSetting) => x.overcommit_ratio === 1 ? "" : ` ×${x.overcommit_ratio}`;
  const fit = (
    name: FilterName,
    setting: ResourceSetting,
    pass: () => boolean,
    what: string,
  ) => ({
    name,
    pass: !setting.enabled || pass(),
    detail: setting.enabled ? what + ratio(setting) : "not checked (disabled)",
  });
  const pressured = [
    ...(n?.pressure?.memory.under_pressure ? ["memory"] : []),
    ...(n?.pressure?.system_disk.under_pressure ? ["system disk"] : []),
  ];
  return [
    {
      name: "node_ready",
      pass: !!n && n.status === "ready",
      detail: n ? `node is ${n.status}` : "node not registered",
    },
    {
      name: "not_cordoned",
      pass: !n?.cordoned,
      detail: n?.cordoned ? "node is cordoned" : "not cordoned",
    },
    {
      name: "no_node_pressure",
      pass: pressured.length === 0,
      detail: pressured.length
        ? pressured.map((k) => `node is under ${k} pressure`).join(", ")
        : "no pressure",
    },
    {
      name: "architecture",
      pass: n?.architecture === req.architecture,
      detail: n?.architecture === req.architecture
        ? `${req.architecture}`
        : `architecture ${n?.architecture ?? "unknown"} does not match ${req.architecture}`,
    },
    {
      name: "pool_ready",
      pass: c.pool.status === "ready",
      detail: `pool instance is ${c.pool.status}`,
    },
    {
      name: "no_pool_pressure",
      pass: !c.poolUnderPressure,
      detail: c.poolUnderPressure ? "pool instance is under disk pressure" : "no pressure",
    },
    fit(
      "cpu_fit",
      r.cpu,
      () => u.cpu_used + req.vcpus <= u.cpu_total * r.cpu.overcommit_ratio,
      `cpu: ${u.cpu_used}+${req.vcpus} of ${u.cpu_total} vCPUs`,
    ),
    fit(
      "memory_fit",
      r.memory,
      () => u.memory_used_mib + req.memory_mib <= u.memory_total_mib * r.memory.overcommit_ratio,
      `memory: ${u.memory_used_mib}+${req.memory_mib} of ${u.memory_total_mib} MiB`,
    ),
    fit(
      "disk_fit",
      r.disk,
      () => diskFits(c, req, r.disk),
      u.disk_total_bytes === null || u.disk_used_bytes === null
        ? "disk: pool capacity not reported yet"
        : `disk: ${gib(u.disk_used_bytes)}+${gib(req.disk_bytes)} of ${gib(u.disk_total_bytes)}`,
    ),
  ];
}

/**
 * Decides where `req` goes among `candidates` (instances of `req.pool`, restricted to
 * `req.node` by the caller when hinted). With `explain`, `verdicts` holds every candidate's
 * filters, utilisation and score (the `--dry-run` table); without, it is only filled when
 * nothing is eligible.
 */
export function decide(
  req: PlacementRequest,
  candidates: readonly Candidate[],
  settings: PlacementSettings,
  explain = false,
): Decision {
  let best: Candidate | null = null;
  let bestScore = -Infinity;
  for (const c of candidates) {
    if (firstFailure(c, req, settings) !== null) continue;
    const score = scoreOf(c, req, settings);
    if (
      best === null || score > bestScore ||
      (score === bestScore && compareNodeNames(c.pool.node, best.pool.node) < 0)
    ) {
      best = c;
      bestScore = score;
    }
  }
  if (!explain && best !== null) {
    return { algorithm: settings.algorithm, winner: best, verdicts: [] };
  }
  const verdicts = candidates.map((c): Verdict => {
    const filters = explainFilters(c, req, settings);
    const failed = filters.filter((f) => !f.pass);
    return {
      node: c.pool.node,
      pool_instance_id: c.pool.id,
      eligible: failed.length === 0,
      filters,
      reasons: failed.map((f) => f.detail),
      utilization: utilizationOf(c),
      score: failed.length === 0 ? scoreOf(c, req, settings) : null,
      winner: c === best,
    };
  }).sort((a, b) => compareNodeNames(a.node, b.node));
  return { algorithm: settings.algorithm, winner: best, verdicts };
}

/**
 * Why nothing was eligible, for `details.reason` of `no_eligible_nodes`:
 * `insufficient_resources` when some candidate failed only on CPU / memory / disk fit,
 * else `node_pressure` when some failed only on pressure, else `no_ready_nodes`.
 */
export function noEligibleReason(verdicts: readonly Verdict[]): string {
  const only = (set: ReadonlySet<FilterName>) =>
    verdicts.some((v) => v.filters.every((f) => f.pass || set.has(f.name)));
  if (only(RESOURCE_FILTERS)) return "insufficient_resources";
  if (only(new Set([...RESOURCE_FILTERS, ...PRESSURE_FILTERS]))) return "node_pressure";
  return "no_ready_nodes";
}

/**
 * The 409 `no_eligible_nodes` for a decision without a winner: details `reason`
 * ({@link noEligibleReason}), `pool`, `architecture`, `node` (when hinted),
 * `node_utilization` (per candidate: CPU, memory and disk used/total and why it was
 * rejected) and `candidates` (each verdict).
 */
export function noEligibleNodesError(req: PlacementRequest, d: Decision): ApiError {
  return new ApiError(
    "no_eligible_nodes",
    `no eligible node for pool "${req.pool}" (${req.architecture}): ` +
      (d.verdicts.length === 0
        ? "no candidates"
        : d.verdicts.map((v) => `${v.node}: ${v.reasons.join(", ")}`).join("; ")),
    {
      reason: noEligibleReason(d.verdicts),
      pool: req.pool,
      architecture: req.architecture,
      ...(req.node !== undefined ? { node: req.node } : {}),
      node_utilization: d.verdicts.map((v) => ({ ...v.utilization, rejected: v.reasons })),
      candidates: d.verdicts.map((v) => ({
        node: v.node,
        eligible: v.eligible,
        reasons: v.reasons,
      })),
    },
  );
}
