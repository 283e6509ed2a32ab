/**
 * VM placement (spec: "VM placement scheduler", algorithm `least_vm_count`): a pure function
 * over nodes, pool instances and per-node VM counts.
 *
 * Candidates are the nodes hosting an instance of the pool. A candidate is eligible when the
 * node is `ready`, not cordoned, has the requested architecture, and its pool instance is
 * `ready`. A `node` hint restricts candidates to that node. The eligible node with the fewest
 * VMs wins; ties break by node name (lowercase lexicographic).
 *
 * @module
 */
import type { Architecture } from "../shared/api/common.ts";
import { pressuredKinds } from "./nodes/pressure.ts";
import { ApiError } from "../shared/errors.ts";
import type { NodeRecord, PoolRecord } from "./repo/records.ts";

/** What to place. */
export interface PlacementRequest {
  pool: string;
  architecture: Architecture;
  /** Placement hint: exactly this node. */
  node?: string;
}

/** Scheduler inputs. */
export interface PlacementInputs {
  nodes: NodeRecord[];
  /** Instances of the requested pool (any node, any status). */
  poolInstances: PoolRecord[];
  /** VMs currently placed per node name. */
  vmCounts: ReadonlyMap<string, number>;
}

/** Why one candidate was or was not eligible (the 409 payload). */
export interface CandidateReport {
  node: string;
  status: string;
  cordoned: boolean;
  architecture: string | null;
  pool_status: string;
  vm_count: number;
  eligible: boolean;
  reasons: string[];
}

/** A placement decision. */
export interface Placement {
  node: NodeRecord;
  pool: PoolRecord;
  candidates: CandidateReport[];
}

/**
 * Picks the node and pool instance for a VM.
 *
 * @throws ApiError `pool_not_found` (no instance of the pool anywhere), `node_not_found`
 *   (hint names no node), `pool_not_on_node` (hinted node has no instance of the pool),
 *   `no_eligible_nodes` (details.candidates lists every candidate and why it was excluded)
 */
export function schedule(req: PlacementRequest, inputs: PlacementInputs): Placement {
  const instances = inputs.poolInstances.filter((p) => p.name === req.pool);
  if (instances.length === 0) {
    throw new ApiError("pool_not_found", `pool "${req.pool}" does not exist on any node`, {
      pool: req.pool,
    });
  }
  const byName = new Map(inputs.nodes.map((n) => [n.name, n]));
  let candidates = instances;
  if (req.node !== undefined) {
    if (!byName.has(req.node)) {
      throw new ApiError("node_not_found", `node "${req.node}" not found`, { node: req.node });
    }
    candidates = instances.filter((p) => p.node === req.node);
    if (candidates.length === 0) {
      throw new ApiError(
        "pool_not_on_node",
        `pool "${req.pool}" has no instance on node "${req.node}"`,
        { pool: req.pool, node: req.node, pool_nodes: instances.map((p) => p.node).sort() },
      );
    }
  }
  const reports: { report: CandidateReport; node?: NodeRecord; pool: PoolRecord }[] = [];
  for (const pool of candidates) {
    const node = byName.get(pool.node);
    const reasons: string[] = [];
    if (!node) reasons.push("node not registered");
    else {
      if (node.status !== "ready") reasons.push(`node is ${node.status}`);
      if (node.cordoned) reasons.push("node is cordoned");
      for (const kind of pressuredKinds(node.pressure)) {
        reasons.push(`node is under ${kind.replace("_", " ")} pressure`);
      }
      if (node.architecture !== req.architecture) {
        reasons.push(
          `architecture ${node.architecture ?? "unknown"} does not match ${req.architecture}`,
        );
      }
    }
    if (pool.status !== "ready") reasons.push(`pool instance is ${pool.status}`);
    reports.push({
      node,
      pool,
      report: {
        node: pool.node,
        status: node?.status ?? "unknown",
        cordoned: node?.cordoned ?? false,
        architecture: node?.architecture ?? null,
        pool_status: pool.status,
        vm_count: inputs.vmCounts.get(pool.node) ?? 0,
        eligible: reasons.length === 0,
        reasons,
      },
    });
  }
  reports.sort((a, b) => cmpName(a.report.node, b.report.node));
  const eligible = reports.filter((r) => r.report.eligible);
  if (eligible.length === 0) {
    throw new ApiError(
      "no_eligible_nodes",
      `no eligible node for pool "${req.pool}" (${req.architecture}): ` +
        reports.map((r) => `${r.report.node}: ${r.report.reasons.join(", ")}`).join("; "),
      {
        pool: req.pool,
        architecture: req.architecture,
        ...(req.node !== undefined ? { node: req.node } : {}),
        candidates: reports.map((r) => r.report),
      },
    );
  }
  eligible.sort((a, b) =>
    a.report.vm_count - b.report.vm_count || cmpName(a.report.node, b.report.node)
  );
  const best = eligible[0];
  return { node: best.node!, pool: best.pool, candidates: reports.map((r) => r.report) };
}

function cmpName(a: string, b: string): number {
  const x = a.toLowerCase(), y = b.toLowerCase();
  return x < y ? -1 : x > y ? 1 : 0;
}
