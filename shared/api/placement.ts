/**
 * Placement decisions on the wire (spec 001 "VM placement scheduler"): the `vm create
 * --dry-run` answer (`POST /v1/vms?dry_run=true` → {@link PlacementDecisionSchema}) and the
 * `details.node_utilization` entries of a 409 `no_eligible_nodes`.
 *
 * @module
 */
import { z } from "zod";

/** Placement algorithms (`placement.algorithm`). */
export const PlacementAlgorithmSchema = z.enum(["resource_aware", "least_vm_count"]);
/** A placement algorithm. */
export type PlacementAlgorithm = z.infer<typeof PlacementAlgorithmSchema>;

/** The scheduler's filters, in evaluation order (cp/scheduler.ts). */
export const PlacementFilterSchema = z.enum([
  "node_ready",
  "not_cordoned",
  "no_node_pressure",
  "architecture",
  "pool_ready",
  "no_pool_pressure",
  "cpu_fit",
  "memory_fit",
  "disk_fit",
]);
/** A filter name. */
export type PlacementFilter = z.infer<typeof PlacementFilterSchema>;

/** A candidate's utilisation before the placement: vCPUs, MiB and bytes used of the total. */
export const NodeUtilizationSchema = z.object({
  node: z.string(),
  pool: z.string(),
  cpu_used: z.number(),
  cpu_total: z.number(),
  memory_used_mib: z.number(),
  memory_total_mib: z.number(),
  /** Null when the pool instance never reported its filesystem. */
  disk_used_bytes: z.number().nullable(),
  disk_total_bytes: z.number().nullable(),
  vm_count: z.number().int(),
});
/** Node utilisation. */
export type NodeUtilization = z.infer<typeof NodeUtilizationSchema>;

/** One candidate's verdict. */
export const PlacementVerdictSchema = z.object({
  node: z.string(),
  pool_instance_id: z.string(),
  eligible: z.boolean(),
  /** Each filter's outcome; `detail` says what it measured or why it failed. */
  filters: z.array(z.object({
    name: PlacementFilterSchema,
    pass: z.boolean(),
    detail: z.string(),
  })),
  /** The failed filters' details. */
  reasons: z.array(z.string()),
  utilization: NodeUtilizationSchema,
  /** The algorithm's score (eligible candidates only; higher wins). */
  score: z.number().nullable(),
  winner: z.boolean(),
});
/** A candidate's verdict. */
export type PlacementVerdict = z.infer<typeof PlacementVerdictSchema>;

/** `POST /v1/vms?dry_run=true` answer: where the VM would go, and why. Nothing is created. */
export const PlacementDecisionSchema = z.object({
  algorithm: PlacementAlgorithmSchema,
  pool: z.string(),
  /** The winner (null: no eligible node). */
  node: z.string().nullable(),
  /** Every candidate, by node name. */
  candidates: z.array(PlacementVerdictSchema),
});
/** A placement decision. */
export type PlacementDecision = z.infer<typeof PlacementDecisionSchema>;
