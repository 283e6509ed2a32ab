/**
 * Defaults shared by the three binaries: ports, standard paths, TTLs and limits
 * (DESIGN.md "Ports, paths, names"; spec: developer guide and storage pools reference).
 * Every default lives here once; configs and CLI flags refer to these names.
 *
 * @module
 */

/** Public REST API port of `otherix-api` (HTTP; TLS optional). */
export const DEFAULT_API_PORT = 8080;
/** Agent-facing TLS port of `otherix-api` (`/v1/ca`, CSR redemption, mTLS heartbeats). */
export const DEFAULT_AGENT_API_PORT = 8443;
/** mTLS port of `otherix-agent`, called by the control plane. */
export const DEFAULT_AGENT_PORT = 9443;

/** The three standard root directories the binaries' permission sandboxes are built from. */
export const STANDARD_ROOTS = {
  /** Operator-provided configuration. */
  config: "/etc/otherix",
  /** Runtime state: certs, pools, VM runtime dirs, control-plane data. */
  state: "/var/lib/otherix",
  /** Volatile runtime files (sockets). */
  run: "/run/otherix",
} as const;

/** Default agent config file. */
export const DEFAULT_AGENT_CONFIG_FILE = "/etc/otherix/agent.yaml";
/** Default control-plane config file. */
export const DEFAULT_API_CONFIG_FILE = "/etc/otherix/api.yaml";

/** Name of the pool the control plane auto-provisions on every ready node. */
export const DEFAULT_POOL_NAME = "default";
/** Default allowed pool path prefix (spec: storage pools, "The allowed-path gate"). */
export const DEFAULT_ALLOWED_POOL_PREFIX = "/var/lib/otherix/pools/";
/** Maximum pool path length in bytes (spec: storage pools). */
export const MAX_POOL_PATH_BYTES = 1024;
/** Period of the pool scan of each pool instance, seconds (spec 001: default 15 min). */
export const DEFAULT_POOL_SCAN_INTERVAL_SECONDS = 15 * 60;
/**
 * Pool `disk` pressure (spec 001 "Node-pressure detection": 15 %, a single scan): a scan with
 * less than `thresholdPercent` of the pool's filesystem free sets it after
 * `consecutiveRequired` such scans in a row; the first scan above it clears it.
 */
export const DEFAULT_POOL_DISK_PRESSURE = { thresholdPercent: 15, consecutiveRequired: 1 };
/** How long `otherix pool create --wait` waits for `ready` or `failed`, seconds (spec 003). */
export const POOL_CREATE_WAIT_SECONDS = 60;

/** Access-token (JWT) lifetime, seconds (spec: 15-minute default). */
export const DEFAULT_JWT_TTL_SECONDS = 15 * 60;
/** Join-token lifetime, seconds (spec: default 10m). */
export const DEFAULT_JOIN_TOKEN_TTL_SECONDS = 10 * 60;
/** Longest join-token lifetime accepted, seconds (7 days). */
export const MAX_JOIN_TOKEN_TTL_SECONDS = 7 * 24 * 3600;
/** Agent heartbeat interval, seconds (spec: 15s in dev). */
export const DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 15;
/** No heartbeat for this long flips a node to `unreachable`, seconds (spec: default 90s). */
export const DEFAULT_STALE_THRESHOLD_SECONDS = 90;
/** An `unreachable` node becomes `gone` after this much longer, seconds (spec: 5 min). */
export const DEFAULT_GONE_GRACE_SECONDS = 300;

/** Prefix of long-lived API tokens (spec: `otx_…`). */
export const API_TOKEN_PREFIX = "otx_";
/** Prefix of join tokens. */
export const JOIN_TOKEN_PREFIX = "otxjoin_";

/** Subject organization of certificates the cluster CA issues to agents. */
export const AGENT_CERT_ORG = "otherix:nodes";
/** Subject organization of per-replica control-plane certificates. */
export const CP_CERT_ORG = "otherix:control-plane";

/** VM sizing bounds and defaults (validation in `shared/api/vms.ts`). */
export const VM_LIMITS = {
  vcpus: { min: 1, max: 64, default: 1 },
  /** MiB. */
  memoryMb: { min: 64, max: 1024 * 1024, default: 512 },
  /** GiB. */
  diskGib: { min: 1, max: 16 * 1024, default: 10 },
  /** Bytes of cloud-init user-data (NoCloud seeds are small; 64 KiB like EC2's 16 KiB x4). */
  userDataBytes: 64 * 1024,
} as const;

/** Page size bounds for cursor-paginated lists. */
export const PAGE_LIMITS = { default: 100, max: 1000 } as const;

/** Default tail of the serial console log returned by `vm logs`, bytes. */
export const DEFAULT_CONSOLE_TAIL_BYTES = 16 * 1024;

/** How long `vm stop` / `vm reboot` wait for the guest to act on ACPI before forcing, seconds. */
export const DEFAULT_STOP_TIMEOUT_SECONDS = 60;
/** Bounds of a stop/reboot timeout, seconds. */
export const STOP_TIMEOUT_LIMITS = { min: 1, max: 3600 } as const;

/** Lifetime of a single-use console token, seconds (spec "Step 5 — console access"). */
export const DEFAULT_CONSOLE_TOKEN_TTL_SECONDS = 30;
/** The byte that detaches `otherix vm console`: Ctrl+] (0x1D), as in telnet and virsh. */
export const CONSOLE_DETACH_BYTE = 0x1d;

/**
 * Restart backoff of VMs whose QEMU exits unasked (restart policy): the first restart is
 * immediate, the n-th (n ≥ 2) waits `initial · 2^(n−2)` seconds up to `max`; the count resets
 * once the VM has run for `reset` seconds (Kubernetes CrashLoopBackOff timings).
 */
export const DEFAULT_RESTART_BACKOFF = { initialSeconds: 10, maxSeconds: 300, resetSeconds: 600 };
