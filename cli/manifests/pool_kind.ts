/**
 * The `StoragePool` kind (spec 003 "Storage pools"): a document is one `POST /v1/pools`
 * instance per node (`node`, or each of `nodeList`), all at `path`; comparison with live
 * instances (`apply`); and the projection of a pool back to manifests (`pool get -o yaml`).
 *
 * Projection (spec caveat): a pool whose instances all share one path is one document —
 * `node` for a single instance, `nodeList` (in node order) for several; instances with
 * different paths project as one document each (`node`), so every node keeps its own path on
 * re-apply. The operator-settable config blob has no manifest field and is not projected.
 *
 * @module
 */
import {
  MANIFEST_API_VERSION,
  MANIFEST_WIRE_FIELDS,
  type StoragePoolManifest,
} from "../../shared/api/manifests.ts";
import {
  type Pool,
  PoolCreateRequestSchema,
  type PoolInstanceView,
} from "../../shared/api/pools.ts";
import type { ManifestDoc } from "./documents.ts";
import { checkRequest, type FieldChange, type Target, wireToManifest } from "./target.ts";

/**
 * The targets of a StoragePool document, one per node, each request checked with the API's
 * schema (a node's error names `spec.node` or `spec.nodeList.<i>`).
 *
 * @throws ManifestError `validation_failed`
 */
export function poolTargets(doc: ManifestDoc<StoragePoolManifest>): Target[] {
  const spec = doc.manifest.spec;
  const nodes = spec.nodeList ?? [spec.node!];
  return nodes.map((node, i) => {
    const nodeField = spec.nodeList ? `spec.nodeList.${i}` : "spec.node";
    const body: Record<string, unknown> = {
      name: doc.manifest.metadata.name,
      node,
      path: spec.path,
      ...(spec.type !== undefined ? { type: spec.type } : {}),
    };
    const fieldOf = wireToManifest(MANIFEST_WIRE_FIELDS.StoragePool, { node: nodeField });
    checkRequest(doc, PoolCreateRequestSchema, body, fieldOf);
    return {
      doc,
      kind: "StoragePool" as const,
      name: doc.manifest.metadata.name,
      node,
      body,
      nodeField,
    };
  });
}

/** How a live instance differs from its target (`path`, `type`). */
export function poolChanges(t: Target, live: PoolInstanceView): FieldChange[] {
  const spec = (t.doc.manifest as StoragePoolManifest).spec;
  const out: FieldChange[] = [];
  if (spec.path !== live.path) {
    out.push({ field: "spec.path", manifest: spec.path, live: live.path });
  }
  if (spec.type !== undefined && spec.type !== live.type) {
    out.push({ field: "spec.type", manifest: spec.type, live: live.type });
  }
  return out;
}

/** One manifest for the instances `list` (all of pool `name`, sharing `path`). */
function poolManifest(
  name: string,
  type: string,
  path: string,
  nodes: string[],
): StoragePoolManifest {
  return {
    apiVersion: MANIFEST_API_VERSION,
    kind: "StoragePool",
    metadata: { name },
    spec: {
      type: type as "local_dir",
      path,
      ...(nodes.length === 1 ? { node: nodes[0] } : { nodeList: nodes }),
    },
  };
}

/** The apply-ready manifests of a pool (see the module doc); [] for a pool without instances. */
export function projectPool(pool: Pool): StoragePoolManifest[] {
  const instances = [...pool.instances].sort((a, b) => a.node.localeCompare(b.node));
  if (instances.length === 0) return [];
  const paths = new Set(instances.map((i) => i.path));
  if (paths.size === 1) {
    return [poolManifest(pool.name, pool.type, instances[0].path, instances.map((i) => i.node))];
  }
  return instances.map((i) => poolManifest(pool.name, i.type, i.path, [i.node]));
}

/** The apply-ready manifest of one instance (`pool get <uuid> -o yaml`). */
export function projectPoolInstance(i: PoolInstanceView): StoragePoolManifest {
  return poolManifest(i.name, i.type, i.path, [i.node]);
}
