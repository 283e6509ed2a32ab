/**
 * The `VM` kind: manifest → `POST /v1/vms` request, comparison with a live VM (`apply`), and
 * the projection of a VM view back to a manifest (`vm get -o yaml`).
 *
 * Projection (spec caveats, exactly): `imageURL`, `imageSHA256` (when set), `arch`, `network`
 * (the first NIC's, when the VM has NICs on Otherix networks), `vcpus`, `memoryMB`, `pool`,
 * `node`, `restartPolicy`. Omitted because consumed at create time: `userData`,
 * `sshAuthorizedKeys`, `networkConfig`, `cloudInitDisabled`, `firmware`/`firmwareID`,
 * `diskGiB`; NICs after the first are lost.
 *
 * @module
 */
import {
  MANIFEST_API_VERSION,
  MANIFEST_WIRE_FIELDS,
  UNSUPPORTED_VM_FIELDS,
  type VmManifest,
  type VmManifestSpec,
} from "../../shared/api/manifests.ts";
import { type Vm, VmCreateRequestSchema } from "../../shared/api/vms.ts";
import { type ManifestDoc, ManifestError } from "./documents.ts";
import { checkRequest, type FieldChange, type Target, wireToManifest } from "./target.ts";
import { firstNetwork } from "../vm_nics.ts";

/** True when this CLI's VM create request can attach networks (`networks`). */
export function vmNetworksSupported(): boolean {
  return "networks" in VmCreateRequestSchema.shape;
}

const fieldOf = wireToManifest(MANIFEST_WIRE_FIELDS.VM, { networks: "spec.network" });

/**
 * The target of a VM document: its create request, checked with the API's schema.
 *
 * @throws ManifestError `validation_failed` naming the field (an unsupported spec field, a
 *   network while this version has none, or whatever the request schema refuses)
 */
export function vmTarget(doc: ManifestDoc<VmManifest>): Target {
  const spec = doc.manifest.spec;
  for (const f of UNSUPPORTED_VM_FIELDS) {
    if (spec[f] !== undefined) {
      throw ManifestError.invalid(
        doc,
        `spec.${f}`,
        "not supported by this version of Otherix (remove the field)",
      );
    }
  }
  const body: Record<string, unknown> = { name: doc.manifest.metadata.name };
  for (const [m, w] of Object.entries(MANIFEST_WIRE_FIELDS.VM)) {
    const v = spec[m as keyof VmManifestSpec];
    if (v !== undefined) body[w] = v;
  }
  if (spec.network !== undefined) {
    if (!vmNetworksSupported()) {
      throw ManifestError.invalid(
        doc,
        "spec.network",
        "networks are not supported by this version of Otherix",
      );
    }
    body.networks = [spec.network];
  }
  checkRequest(doc, VmCreateRequestSchema, body, fieldOf);
  return { doc, kind: "VM", name: doc.manifest.metadata.name, body };
}

/**
 * The immutable fields a live VM has differently from its manifest. Only fields the manifest
 * sets are compared; `userData` and `sshAuthorizedKeys` are not in the VM view and cannot be.
 */
export function vmChanges(spec: VmManifestSpec, live: Vm): FieldChange[] {
  const pairs: [string, unknown, unknown][] = [
    ["imageURL", spec.imageURL, live.image_url],
    ["imageSHA256", spec.imageSHA256, live.image_sha256],
    ["arch", spec.arch, live.architecture],
    ["vcpus", spec.vcpus, live.vcpus],
    ["memoryMB", spec.memoryMB, live.memory_mb],
    ["diskGiB", spec.diskGiB, live.disk_gib],
    ["pool", spec.pool, live.pool],
    ["node", spec.node, live.node],
    ["restartPolicy", spec.restartPolicy, live.restart_policy],
    ["network", spec.network, firstNetwork(live)],
  ];
  return pairs
    .filter(([, want, have]) => want !== undefined && want !== have)
    .map(([f, want, have]) => ({ field: `spec.${f}`, manifest: want, live: have }));
}

/** The apply-ready manifest of a VM view (see the module doc for what is omitted). */
export function projectVm(vm: Vm): VmManifest {
  const network = firstNetwork(vm);
  // Key order as in the spec's example.
  const spec: VmManifestSpec = {
    imageURL: vm.image_url,
    ...(vm.image_sha256 ? { imageSHA256: vm.image_sha256 } : {}),
    arch: vm.architecture,
    ...(network !== null ? { network } : {}),
    vcpus: vm.vcpus,
    memoryMB: vm.memory_mb,
    pool: vm.pool,
    node: vm.node,
    restartPolicy: vm.restart_policy,
  };
  return {
    apiVersion: MANIFEST_API_VERSION,
    kind: "VM",
    metadata: { name: vm.name },
    spec,
  };
}
