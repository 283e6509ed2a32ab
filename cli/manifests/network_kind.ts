/**
 * The `Network` kind (shared/api/networks.ts): manifest → `POST /v1/networks` request,
 * comparison with a live network (`apply`), and the projection of a network back to a manifest
 * (`network get -o yaml`).
 *
 * Projection (spec caveat): a bridge network round-trips in full (`type`, `managed`,
 * `bridgeName`, and `mtu`, `subnet`, `gateway` when the network has them); an overlay projects
 * only `type` and `subnet` (its bridge name, MTU and VNI are server-derived and the create API
 * refuses them), so re-applying it allocates a fresh VNI.
 *
 * @module
 */
import {
  MANIFEST_API_VERSION,
  MANIFEST_WIRE_FIELDS,
  type NetworkManifest,
  type NetworkManifestSpec,
} from "../../shared/api/manifests.ts";
import { type Network, NetworkCreateRequestSchema } from "../../shared/api/networks.ts";
import type { ManifestDoc } from "./documents.ts";
import { checkRequest, type FieldChange, type Target, wireToManifest } from "./target.ts";

/** The fields of a network view the manifest uses. */
export type NetworkView = Pick<
  Network,
  "name" | "type" | "managed" | "bridge_name" | "mtu" | "subnet" | "gateway"
>;

const fieldOf = wireToManifest(MANIFEST_WIRE_FIELDS.Network);

/**
 * The target of a Network document: its create request (spec fields mapped to the API's
 * snake_case names), checked with the API's request schema.
 *
 * @throws ManifestError `validation_failed` naming the manifest field
 */
export function networkTarget(doc: ManifestDoc<NetworkManifest>): Target {
  const spec = doc.manifest.spec;
  const body: Record<string, unknown> = { name: doc.manifest.metadata.name };
  for (const [m, w] of Object.entries(MANIFEST_WIRE_FIELDS.Network)) {
    const v = spec[m as keyof NetworkManifestSpec];
    if (v !== undefined) body[w] = v;
  }
  checkRequest(doc, NetworkCreateRequestSchema, body, fieldOf);
  return { doc, kind: "Network", name: doc.manifest.metadata.name, body };
}

/**
 * The immutable fields a live network has differently from its manifest (fields the manifest
 * sets; `managed` absent counts as false).
 */
export function networkChanges(spec: NetworkManifestSpec, live: NetworkView): FieldChange[] {
  const out: FieldChange[] = [];
  for (const [m, w] of Object.entries(MANIFEST_WIRE_FIELDS.Network)) {
    const want = spec[m as keyof NetworkManifestSpec];
    if (want === undefined) continue;
    const have = (live as Record<string, unknown>)[w] ?? null;
    if (want !== have) out.push({ field: `spec.${m}`, manifest: want, live: have });
  }
  return out;
}

/** The apply-ready manifest of a network view (see the module doc). */
export function projectNetwork(n: NetworkView): NetworkManifest {
  const spec: NetworkManifestSpec = n.type === "overlay"
    ? { type: "overlay", ...(n.subnet ? { subnet: n.subnet } : {}) }
    : {
      type: "bridge",
      managed: n.managed,
      bridgeName: n.bridge_name,
      ...(n.mtu !== null ? { mtu: n.mtu } : {}),
      ...(n.subnet ? { subnet: n.subnet } : {}),
      ...(n.gateway ? { gateway: n.gateway } : {}),
    };
  return { apiVersion: MANIFEST_API_VERSION, kind: "Network", metadata: { name: n.name }, spec };
}
