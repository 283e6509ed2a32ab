/**
 * What the manifest engine acts on: one resource a document stands for (a VM, a network, or
 * one per-node instance of a StoragePool document), with the create request that makes it,
 * and the helpers the kinds share to check that request with the API's own schema.
 *
 * @module
 */
import type { z } from "zod";
import type { ManifestKind } from "../../shared/api/manifests.ts";
import { type ManifestDoc, ManifestError } from "./documents.ts";

/** One resource of a document: what to create, find, compare and delete. */
export interface Target {
  doc: ManifestDoc;
  kind: ManifestKind;
  name: string;
  /** StoragePool instances: the node. */
  node?: string;
  /** The create request (wire form, checked with the API's schema; defaults not applied). */
  body: Record<string, unknown>;
  /** Manifest field of `node` (StoragePool: `spec.node` or `spec.nodeList.<i>`). */
  nodeField?: string;
}

/** `vm/demo-vm`, `network/demo-net`, `storagepool/fast on node node-1`: a target in output. */
export function refOf(t: Pick<Target, "kind" | "name" | "node">): string {
  const base = `${t.kind.toLowerCase()}/${t.name}`;
  return t.node === undefined ? base : `${base} on node ${t.node}`;
}

/**
 * Checks `body` with the API's request `schema`; the first issue becomes a
 * `validation_failed` ManifestError naming the manifest field (`fieldOf` maps the request's
 * top-level field to the manifest's; the rest of the path is kept, e.g. an SSH key's index).
 */
export function checkRequest(
  doc: ManifestDoc,
  schema: z.ZodType,
  body: Record<string, unknown>,
  fieldOf: (wire: string) => string,
): void {
  const r = schema.safeParse(body);
  if (r.success) return;
  const issue = r.error.issues[0];
  const [head, ...rest] = issue.path.map(String);
  const field = head === undefined ? null : [fieldOf(head), ...rest].join(".");
  throw ManifestError.invalid(doc, field, issue.message);
}

/** Reverse of a manifest → wire field map, plus `name` → `metadata.name`. */
export function wireToManifest(
  map: Record<string, string>,
  extra: Record<string, string> = {},
): (wire: string) => string {
  const rev = new Map<string, string>([["name", "metadata.name"]]);
  for (const [m, w] of Object.entries(map)) rev.set(w, `spec.${m}`);
  for (const [w, m] of Object.entries(extra)) rev.set(w, m);
  return (wire) => rev.get(wire) ?? wire;
}

/** One immutable field a live resource has differently from its manifest. */
export interface FieldChange {
  /** Manifest field, e.g. `spec.memoryMB`. */
  field: string;
  /** What the manifest says. */
  manifest: unknown;
  /** What the resource has. */
  live: unknown;
}
