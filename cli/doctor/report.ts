/**
 * What `otherix doctor` reports: one {@link CheckResult} per check (per node where the check
 * is per node), the guidance texts of spec 000 (troubleshooting reference) a failing check
 * prints, and the two renderings (text for people, JSON for scripts).
 *
 * @module
 */

/** Outcome of one check: `fail` makes `doctor` exit 1, `warn` does not, `skip` = not run. */
export type CheckStatus = "pass" | "warn" | "fail" | "skip";

/** The spec's three columns for a failure: what one sees, why, what to do. */
export interface Guidance {
  /** The symptom, as spec 000 words it. */
  symptom: string;
  /** The likely cause. */
  cause: string;
  /** How to inspect / recover. */
  recover: string;
}

/** One check's result. */
export interface CheckResult extends Partial<Guidance> {
  /** Stable check id (`config`, `reachable`, `tls_sans`, … see {@link CHECK_IDS}). */
  id: CheckId;
  status: CheckStatus;
  /** The node the result is about (per-node checks), else absent. */
  node?: string;
  /** One line: what was found (pass) or what is wrong (warn/fail). */
  detail: string;
}

/** Every check, in the order they run and print. */
export const CHECK_IDS = [
  "config",
  "tls_sans",
  "reachable",
  "clock_skew",
  "token",
  "workers",
  "node_state",
  "agent_ping",
  "kvm",
  "pool_space",
  "default_pool",
  "failed_tasks",
] as const;
/** A check id. */
export type CheckId = typeof CHECK_IDS[number];

/** Largest tolerated difference between the server's `Date` and the local clock, seconds. */
export const MAX_CLOCK_SKEW_SECONDS = 30;
/** A task still `pending` after this long points at disabled workers (spec 000), seconds. */
export const PENDING_TASK_STUCK_SECONDS = 60;
/** `failed_tasks` looks this far back, seconds (one hour). */
export const FAILED_TASK_WINDOW_SECONDS = 3600;
/** Under this share of free bytes a pool instance gets a warning, percent. */
export const POOL_LOW_FREE_PERCENT = 10;

/**
 * The guidance of each check when it fails (texts from spec 000, "troubleshooting
 * reference"; `tls_sans`, `clock_skew` and `kvm` from its certificate and `qemu_spawn_failed`
 * rows).
 */
export const GUIDANCE: Record<CheckId, Guidance> = {
  config: {
    symptom: "error: no API server configured (or the config file cannot be read)",
    cause: "no --endpoint/$OTHERIX_SERVER and no current cluster in the CLI config",
    recover: "otherix config add cluster NAME --server URL (stores a long-lived otx_* token), " +
      "or set OTHERIX_SERVER and OTHERIX_API_TOKEN",
  },
  tls_sans: {
    symptom: "TLS handshake errors: the certificate does not name the address used",
    cause: "the address is not in the server certificate's SAN set",
    recover: "use a name/IP the certificate lists, or add it to cp_cert.additional_sans " +
      "(or reissue the public API certificate) and restart otherix-api",
  },
  reachable: {
    symptom: "connection refused / timeout, or /readyz answers 503",
    cause: "the api-server is not running or not reachable from here; a 503 from /readyz " +
      "means it cannot reach its store",
    recover: "confirm the CP is up (curl <server>/healthz) and reachable from this host; " +
      "for a 503 read the api-server logs (journalctl -u otherix-api)",
  },
  clock_skew: {
    symptom: "tokens rejected as expired or not yet valid, certificates not yet valid",
    cause: "this host's clock and the server's disagree",
    recover: "synchronise both clocks (timedatectl set-ntp true / chrony)",
  },
  token: {
    symptom: "api_error: unauthenticated from the CLI",
    cause: "access token expired (JWTs default to 15-min TTL) or the stored token was revoked",
    recover: "re-login, or use a long-lived otx_* API token (otherix config add cluster stores " +
      "one). If the cluster CA rotated, refresh the stored credential",
  },
  workers: {
    symptom: "async tasks stay pending forever",
    cause: "the control plane runs with workers disabled: it accepts tasks but never runs them",
    recover: "confirm workers.enabled: true and that the agent client is provisioned, then " +
      "restart otherix-api",
  },
  node_state: {
    symptom: "node flips ready -> unreachable (or gone), or stays pending",
    cause: "heartbeats stopped arriving for longer than the stale threshold (default 90s); " +
      "gone once unreachable past the gone-grace window (default 5m)",
    recover: "check the agent process is alive (journalctl -u otherix-agent) and the network " +
      "path to the CP; the node returns to ready once heartbeats resume",
  },
  agent_ping: {
    symptom: "agent_unreachable on an operation",
    cause: "the CP could not reach the agent's mTLS endpoint",
    recover: "verify the agent is running and its advertised endpoint is reachable from the " +
      "CP; otherix node get NAME for the last heartbeat",
  },
  kvm: {
    symptom: "VMs are slow (or task error qemu_spawn_failed)",
    cause: "KVM is unavailable on the node (e.g. nested virt not exposed): the agent falls " +
      "back to TCG software emulation",
    recover: "TCG is functional but slow; provision KVM (/dev/kvm) for real workloads",
  },
  pool_space: {
    symptom: "no_eligible_nodes on vm create",
    cause: "the pool is not ready, under disk pressure or nearly full, so placement " +
      "excludes it",
    recover: "otherix pool list / otherix pool get NAME for status and free space; free " +
      "space or add a pool on another node",
  },
  default_pool: {
    symptom: "default_pool_not_set (or pool_not_found) on vm create without --pool",
    cause: "no cluster default pool is set, or it names a pool with no instance",
    recover: "otherix cluster set-default-pool NAME, or pass --pool explicitly",
  },
  failed_tasks: {
    symptom: "otherix vm get shows a failed task with an error code",
    cause: "see the code's row in the troubleshooting reference (e.g. qemu_spawn_failed, " +
      "download_failed, node_not_ready)",
    recover: "read the task error (otherix vm get NAME); fix the cause and retry",
  },
};

/** A result with the check's guidance attached when it failed or warned. */
export function result(
  id: CheckId,
  status: CheckStatus,
  detail: string,
  node?: string,
): CheckResult {
  const r: CheckResult = { id, status, detail };
  if (node !== undefined) r.node = node;
  if (status === "fail" || status === "warn") Object.assign(r, GUIDANCE[id]);
  return r;
}

/** Counts per status. */
export function summarize(results: CheckResult[]): Record<CheckStatus, number> {
  const counts = { pass: 0, warn: 0, fail: 0, skip: 0 };
  for (const r of results) counts[r.status]++;
  return counts;
}

/**
 * The text report: one line per result (`PASS  id  [node]  detail`), the guidance indented
 * under a warning or failure, then a summary line. No colour (nothing to turn off for
 * `NO_COLOR`).
 */
export function renderText(results: CheckResult[]): string {
  const idWidth = Math.max(...results.map((r) => label(r).length));
  let out = "";
  for (const r of results) {
    out += `${r.status.toUpperCase().padEnd(4)}  ${label(r).padEnd(idWidth)}  ${r.detail}\n`;
    if (r.symptom) {
      const pad = " ".repeat(idWidth + 6);
      out += `${pad}symptom: ${r.symptom}\n${pad}cause:   ${r.cause}\n` +
        `${pad}recover: ${r.recover}\n`;
    }
  }
  const s = summarize(results);
  out += `\n${s.pass} passed, ${s.warn} warnings, ${s.fail} failed, ${s.skip} skipped\n`;
  return out;
}

function label(r: CheckResult): string {
  return r.node ? `${r.id}[${r.node}]` : r.id;
}
