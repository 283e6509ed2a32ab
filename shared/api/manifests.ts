/**
 * Declarative manifests (spec 001 "Declarative manifests"): YAML documents
 * `{apiVersion: otherix/v1, kind, metadata: {name}, spec}` of the kinds `Network`,
 * `StoragePool` and `VM`, read by `otherix create|apply|delete -f` and projected back by
 * `vm get -o yaml`, `pool get -o yaml` and `network get -o yaml`.
 *
 * Field names are the spec's (camelCase, e.g. `imageURL`, `memoryMB`, `bridgeName`); each
 * kind maps them onto its create request of the public API (snake_case), and the values are
 * judged by that request's own schema (shared/api/vms.ts, pools.ts, networks.ts), so a
 * manifest accepts exactly what the API accepts. These schemas check the document's shape:
 * the envelope, the kinds, the field names (unknown fields are refused) and their JSON types.
 *
 * Round trip (spec caveats; `get -o yaml` projects these and only these):
 * - VM: `userData`, `networkConfig`, `cloudInitDisabled`, `firmware`/`firmwareID`, `diskGiB`
 *   (and `sshAuthorizedKeys`) are consumed at create time and omitted from the projection;
 *   only the first NIC is projected (`network`, one attachment).
 * - Network: bridge networks round-trip in full; an overlay projects `type` + `subnet` only.
 * - StoragePool: a pool whose instances share one path projects as one document (`node`, or
 *   `nodeList` for several nodes); instances with different paths as one document each.
 *
 * @module
 */
import { z } from "zod";
import { ResourceNameSchema } from "./common.ts";

/** The only manifest `apiVersion`. */
export const MANIFEST_API_VERSION = "otherix/v1";

/** The manifest kinds in creation order (references resolve: a VM names its network, pool). */
export const MANIFEST_KINDS = ["Network", "StoragePool", "VM"] as const;
/** A manifest kind. */
export type ManifestKind = typeof MANIFEST_KINDS[number];
/** zod schema of a kind. */
export const ManifestKindSchema = z.enum(MANIFEST_KINDS);

/** `metadata`: the resource name (an RFC 1123 label, like every resource name). */
export const ManifestMetadataSchema = z.object({ name: ResourceNameSchema }).strict();
/** Manifest metadata. */
export type ManifestMetadata = z.infer<typeof ManifestMetadataSchema>;

/**
 * The envelope every document has; `spec` is checked by its kind's schema
 * ({@link MANIFEST_SPEC_SCHEMAS}).
 */
export const ManifestEnvelopeSchema = z.object({
  apiVersion: z.literal(MANIFEST_API_VERSION, {
    error: `must be "${MANIFEST_API_VERSION}"`,
  }),
  kind: z.enum(MANIFEST_KINDS, {
    error: `must be one of ${MANIFEST_KINDS.join(", ")}`,
  }),
  metadata: ManifestMetadataSchema,
  spec: z.record(z.string(), z.unknown(), { error: "must be a mapping" }),
}).strict();

/**
 * `kind: Network` spec (spec 001 example: a managed bridge; shared/api/networks.ts). `bridge`
 * networks either attach to a host bridge (`managed: false`, `bridgeName` of the existing
 * bridge) or are created by the agents (`managed: true`); an `overlay` spans nodes over VXLAN
 * and takes only `subnet` (its bridge name, MTU and VNI are server-derived). Values are judged
 * by the network API's request schema (`NetworkCreateRequestSchema`).
 */
export const NetworkManifestSpecSchema = z.object({
  type: z.string(),
  managed: z.boolean().optional(),
  bridgeName: z.string().optional(),
  /** Bytes. */
  mtu: z.number().int().optional(),
  /** IPv4 CIDR of the addresses Otherix assigns (managed bridges and overlays). */
  subnet: z.string().optional(),
  /** A managed bridge's gateway address inside `subnet` (default: its first host address). */
  gateway: z.string().optional(),
}).strict();
/** A Network manifest spec. */
export type NetworkManifestSpec = z.infer<typeof NetworkManifestSpecSchema>;

/**
 * `kind: StoragePool` spec (spec 003): one instance per node, on `node` or on each of
 * `nodeList` (exactly one of the two), every one at `path`.
 */
export const StoragePoolManifestSpecSchema = z.object({
  type: z.enum(["local_dir"]).optional(),
  path: z.string(),
  node: z.string().optional(),
  nodeList: z.array(z.string()).min(1, "must name at least one node").optional(),
}).strict().superRefine((s, ctx) => {
  if ((s.node === undefined) === (s.nodeList === undefined)) {
    ctx.addIssue({
      code: "custom",
      path: s.node === undefined ? ["node"] : ["nodeList"],
      message: "give exactly one of node and nodeList",
    });
  }
  const dup = s.nodeList?.find((n, i) => s.nodeList!.indexOf(n) !== i);
  if (dup !== undefined) {
    ctx.addIssue({ code: "custom", path: ["nodeList"], message: `names node ${dup} twice` });
  }
});
/** A StoragePool manifest spec. */
export type StoragePoolManifestSpec = z.infer<typeof StoragePoolManifestSpecSchema>;

/**
 * `kind: VM` spec (spec 001 example). `network` attaches the VM's one NIC to that network
 * (omitted: the default user-mode NAT NIC); `pool` omitted means the cluster default pool;
 * `userData` is cloud-config sent as `user_data` at create time; `sshAuthorizedKeys` are
 * merged into it by the control plane. `networkConfig`, `cloudInitDisabled`, `firmware` and
 * `firmwareID` are spec fields this control plane does not offer (refused by name).
 */
export const VmManifestSpecSchema = z.object({
  imageURL: z.string(),
  imageSHA256: z.string().optional(),
  arch: z.string(),
  network: z.string().optional(),
  vcpus: z.number().int().optional(),
  /** MiB. */
  memoryMB: z.number().int().optional(),
  /** GiB. */
  diskGiB: z.number().int().optional(),
  userData: z.string().optional(),
  sshAuthorizedKeys: z.array(z.string()).optional(),
  pool: z.string().optional(),
  node: z.string().optional(),
  restartPolicy: z.string().optional(),
  networkConfig: z.unknown().optional(),
  cloudInitDisabled: z.unknown().optional(),
  firmware: z.unknown().optional(),
  firmwareID: z.unknown().optional(),
}).strict();
/** A VM manifest spec. */
export type VmManifestSpec = z.infer<typeof VmManifestSpecSchema>;

/** The spec schema of each kind. */
export const MANIFEST_SPEC_SCHEMAS = {
  Network: NetworkManifestSpecSchema,
  StoragePool: StoragePoolManifestSpecSchema,
  VM: VmManifestSpecSchema,
} as const satisfies Record<ManifestKind, z.ZodType>;

/** A manifest document of kind `K`. */
export interface ManifestOf<K extends ManifestKind> {
  apiVersion: typeof MANIFEST_API_VERSION;
  kind: K;
  metadata: ManifestMetadata;
  spec: z.infer<typeof MANIFEST_SPEC_SCHEMAS[K]>;
}

/** A Network manifest. */
export type NetworkManifest = ManifestOf<"Network">;
/** A StoragePool manifest. */
export type StoragePoolManifest = ManifestOf<"StoragePool">;
/** A VM manifest. */
export type VmManifest = ManifestOf<"VM">;
/** Any manifest document. */
export type Manifest = NetworkManifest | StoragePoolManifest | VmManifest;

/**
 * Manifest field → create-request field of each kind (the API's snake_case names), for the
 * fields that map one to one. Used to translate manifests and to name the manifest field in
 * errors the API schema reports.
 */
export const MANIFEST_WIRE_FIELDS = {
  Network: {
    type: "type",
    managed: "managed",
    bridgeName: "bridge_name",
    mtu: "mtu",
    subnet: "subnet",
    gateway: "gateway",
  },
  StoragePool: { type: "type", path: "path", node: "node" },
  VM: {
    imageURL: "image_url",
    imageSHA256: "image_sha256",
    arch: "architecture",
    vcpus: "vcpus",
    memoryMB: "memory_mb",
    diskGiB: "disk_gib",
    userData: "user_data",
    sshAuthorizedKeys: "ssh_authorized_keys",
    pool: "pool",
    node: "node",
    restartPolicy: "restart_policy",
  },
} as const satisfies Record<ManifestKind, Record<string, string>>;

/**
 * VM spec fields of the spec this control plane has no API for: a manifest that sets one is
 * refused (`validation_failed` naming the field) rather than silently dropped.
 */
export const UNSUPPORTED_VM_FIELDS = [
  "networkConfig",
  "cloudInitDisabled",
  "firmware",
  "firmwareID",
] as const;
