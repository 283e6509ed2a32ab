/**
 * `otherix-api` configuration (YAML, `--config FILE`), with `OTHERIX_<SECTION>__<KEY>`
 * env overrides (see `shared/config.ts`). Every key and default is documented in README.md
 * ("Control-plane config").
 *
 * @module
 */
import { z } from "zod";
import {
  AbsolutePathSchema,
  ListenAddressSchema,
  loadConfigFile,
  parseConfig,
} from "../shared/config.ts";
import {
  DEFAULT_AGENT_API_PORT,
  DEFAULT_ALLOWED_POOL_PREFIX,
  DEFAULT_API_PORT,
  DEFAULT_CONSOLE_TOKEN_TTL_SECONDS,
  DEFAULT_GONE_GRACE_SECONDS,
  DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
  DEFAULT_JOIN_TOKEN_TTL_SECONDS,
  DEFAULT_JWT_TTL_SECONDS,
  DEFAULT_POOL_DISK_PRESSURE,
  DEFAULT_POOL_NAME,
  DEFAULT_POOL_SCAN_INTERVAL_SECONDS,
  DEFAULT_RESTART_BACKOFF,
  DEFAULT_STALE_THRESHOLD_SECONDS,
  STANDARD_ROOTS,
} from "../shared/constants.ts";
import { ResourceNameSchema } from "../shared/api/common.ts";
import { UrlPolicySchema } from "../shared/url_policy.ts";
import { PLACEMENT_ALGORITHMS } from "./scheduler.ts";

/** One pressure condition's settings (`placement.pressure.<kind>`). */
const PressureConfigSchema = z.object({
  enabled: z.boolean().default(true),
  /** Under this share free, percent, a heartbeat counts as low. */
  threshold_percent: z.number().min(0).max(100).default(10),
  /** Low heartbeats in a row that set the condition. */
  consecutive_required: z.number().int().min(1).max(100).default(3),
}).strict();

/**
 * One resource's placement settings (`placement.resources.<cpu|memory|disk>`, spec 001
 * "VM placement scheduler"): checked or not, and the capacity multiplier (1 = strict; above 1
 * overcommits and is announced with a Warn line at startup, cp/vms/placement_config.ts).
 */
const ResourceSettingSchema = z.object({
  enabled: z.boolean().default(true),
  overcommit_ratio: z.number().min(0.1).max(100).default(1),
}).strict();

/** An etcd client URL: `https://host:port`, nothing after the port. */
const EtcdEndpointSchema = z.string().refine((v) => {
  try {
    const u = new URL(v);
    return u.protocol === "https:" && !!u.port && /^https:\/\/[^/?#]+\/?$/.test(v) &&
      !u.username;
  } catch {
    return false;
  }
}, { error: (i) => `must be an https://host:port URL, got ${JSON.stringify(i.input)}` });

/** `store.etcd`: the TLS files and prefix go with `endpoints` (an external cluster). */
function checkExternalEtcd(
  etcd: {
    endpoints: string[];
    ca_file?: string;
    cert_file?: string;
    key_file?: string;
    prefix?: string;
  },
  ctx: z.RefinementCtx,
): void {
  if (etcd.endpoints.length && !etcd.ca_file) {
    ctx.addIssue({
      code: "custom",
      path: ["ca_file"],
      message: "required with store.etcd.endpoints: the CA of the etcd members' certificates",
    });
  }
  if (!!etcd.cert_file !== !!etcd.key_file) {
    ctx.addIssue({
      code: "custom",
      path: ["cert_file"],
      message: "store.etcd.cert_file and store.etcd.key_file must be set together",
    });
  }
  for (const key of ["ca_file", "cert_file", "key_file", "prefix"] as const) {
    if (etcd[key] && !etcd.endpoints.length) {
      ctx.addIssue({
        code: "custom",
        path: [key],
        message: "only used with store.etcd.endpoints (an external etcd cluster)",
      });
    }
  }
}

/** The control-plane config schema (defaults applied). */
export const ApiConfigSchema = z.object({
  server: z.object({
    /** Public REST API listen address. */
    listen: ListenAddressSchema.prefault(`0.0.0.0:${DEFAULT_API_PORT}`),
    /** Agent-facing TLS listen address (`/v1/ca`, bootstrap, heartbeats). */
    agent_listen: ListenAddressSchema.prefault(`0.0.0.0:${DEFAULT_AGENT_API_PORT}`),
    /** Optional TLS for the public API (PEM files); both or neither. */
    tls_cert_file: AbsolutePathSchema.optional(),
    tls_key_file: AbsolutePathSchema.optional(),
    /**
     * Host (name or IP) other machines use to reach this replica: its `api_url` and
     * `agent_url` in the replica registry (cp/cluster/replicas.ts; agents fail over between
     * them). Default: the listen host when it is not a wildcard, else the first non-loopback
     * interface address, else the hostname.
     */
    advertise_host: z.string().min(1).max(253).optional(),
  }).strict().prefault({}),
  store: z.object({
    /**
     * `embedded` (Deno KV in `data_dir`: one replica) or `etcd` (HA replicas: each runs its
     * own etcd member, below, or all use an external cluster, `etcd.endpoints`).
     */
    backend: z.enum(["embedded", "etcd"]).default("embedded"),
    /** Control-plane data directory (store, CA, replica cert). */
    data_dir: AbsolutePathSchema.default(`${STANDARD_ROOTS.state}/api`),
    etcd: z.object({
      /**
       * The supervised etcd member of this replica (cp/cluster/etcd_member.ts), used when
       * `endpoints` is empty: data in `<data_dir>/etcd`, client and peer TLS with the
       * cluster CA and this replica's certificate, reached at `server.advertise_host`.
       */
      member: z.object({
        /** The etcd executable (Debian `etcd-server`: /usr/bin/etcd). */
        binary: z.string().min(1).default("/usr/bin/etcd"),
        /** Client port (other replicas' stores connect here). */
        client_port: z.number().int().min(1).max(65535).default(2379),
        /** Peer port (raft). */
        peer_port: z.number().int().min(1).max(65535).default(2380),
        /** etcd `--heartbeat-interval` and `--election-timeout`, ms (etcd's defaults). */
        heartbeat_ms: z.number().int().min(10).max(10_000).default(100),
        election_ms: z.number().int().min(50).max(50_000).default(1000),
        /** How often caught-up learners are promoted to voters, seconds (spec 000: ~15). */
        promote_interval_seconds: z.number().int().min(1).max(600).default(15),
        /**
         * How long one store request may take, seconds: a write while quorum is lost fails
         * with `store_unavailable` after this long.
         */
        request_timeout_seconds: z.number().int().min(1).max(300).default(15),
      }).strict().prefault({}),
      /**
       * An existing external etcd cluster instead of the member: its members' client URLs
       * (`https://host:port`); empty (the default) runs this replica's own member.
       */
      endpoints: z.array(EtcdEndpointSchema).max(16).default([]),
      /** With `endpoints`: the CA certificate(s) of the members' certificates (PEM file). */
      ca_file: AbsolutePathSchema.optional(),
      /** With `endpoints`: client certificate (etcd `--client-cert-auth`) and key, PEM files. */
      cert_file: AbsolutePathSchema.optional(),
      key_file: AbsolutePathSchema.optional(),
      /**
       * With `endpoints`: key namespace in the cluster (`/otherix` → `/otherix/vms/…`), so
       * it can be shared; it must not be a prefix of another namespace there. Default: none.
       */
      prefix: z.string().regex(
        /^\/[A-Za-z0-9._\/-]*[A-Za-z0-9._-]$/,
        "must start with / and not end with / (letters, digits, . _ - /)",
      ).max(128).optional(),
    }).strict().superRefine(checkExternalEtcd).prefault({}),
  }).strict().superRefine((store, ctx) => {
    if (store.backend !== "etcd" && store.etcd.endpoints.length) {
      ctx.addIssue({
        code: "custom",
        path: ["etcd", "endpoints"],
        message: "only used with store.backend: etcd (the backend is embedded)",
      });
    }
  }).prefault({}),
  cp_cert: z.object({
    /** This replica's name (certificate CN); defaults to the hostname. */
    replica_name: z.string().min(1).max(64).optional(),
    /** Extra DNS names / IPs for the replica certificate's SANs. */
    additional_sans: z.array(z.string().min(1)).default([]),
  }).strict().prefault({}),
  agent_client: z.object({
    /**
     * The control plane's mTLS client for agents (spec 001 "Phase D"): its material is the
     * cluster CA and this replica's certificate under `<data_dir>/pki`, issued on first boot
     * and kept by the `cp_cert` block. The task workers need it ("Phase 2 lock", below); the
     * production example (deploy/config/api.example.yaml) starts with it off.
     */
    enabled: z.boolean().default(true),
  }).strict().prefault({}),
  auth: z.object({
    /** Access-token (JWT) lifetime, seconds. */
    jwt_ttl_seconds: z.number().int().min(60).max(24 * 3600).default(DEFAULT_JWT_TTL_SECONDS),
    /**
     * Failed-login throttling (cp/auth/login_throttle.ts): after `max_failures_per_email`
     * failures for one email, or `max_failures_per_address` from one source address, within
     * `window_seconds`, logins answer 429 `too_many_requests` with `Retry-After`.
     */
    login_throttle: z.object({
      max_failures_per_email: z.number().int().min(1).max(1000).default(5),
      max_failures_per_address: z.number().int().min(1).max(100_000).default(20),
      window_seconds: z.number().int().min(1).max(24 * 3600).default(300),
    }).strict().prefault({}),
    /**
     * OIDC sign-on (`otherix login --oidc`, cp/auth/oidc.ts); absent: off. Users are created
     * on first sign-in with the role their `role_claim` maps to (the most powerful match),
     * else `default_role`; without either the sign-in is refused.
     */
    oidc: z.object({
      /**
       * The issuer URL (its `/.well-known/openid-configuration` is read; its `issuer` must
       * match). `http://` only on a loopback address.
       */
      issuer: z.string().url(),
      /** The client id registered at the issuer for the CLI (a public client, PKCE). */
      client_id: z.string().min(1),
      scopes: z.array(z.string().min(1)).min(1).default(["openid", "email", "profile"]),
      /** The claim holding the email (the user's login): ID token, else userinfo. */
      email_claim: z.string().min(1).default("email"),
      /** The claim whose value(s) map to a role (a string or an array): ID token, else userinfo. */
      role_claim: z.string().min(1).default("groups"),
      /** Claim value → role. */
      role_mapping: z.record(z.string(), z.enum(["admin", "operator", "developer", "viewer"]))
        .default({}),
      /** The role of a user no mapping matches (null: refuse them). */
      default_role: z.enum(["admin", "operator", "developer", "viewer"]).nullable().default(null),
    }).strict().optional(),
  }).strict().prefault({}),
  audit: z.object({
    /** Audit entries kept at most (the oldest go first), cp/audit/. */
    max_entries: z.number().int().min(100).max(1_000_000).default(10_000),
    /** Audit entries older than this are dropped, days. */
    max_age_days: z.number().int().min(1).max(3650).default(90),
  }).strict().prefault({}),
  nodes: z.object({
    /** Heartbeat cadence the control plane asks agents for, seconds. */
    heartbeat_interval_seconds: z.number().int().min(1).max(600)
      .default(DEFAULT_HEARTBEAT_INTERVAL_SECONDS),
    /** No heartbeat for this long → node `unreachable`, seconds. */
    stale_threshold_seconds: z.number().int().min(2).max(3600)
      .default(DEFAULT_STALE_THRESHOLD_SECONDS),
    /** An `unreachable` node becomes `gone` this long after it went unreachable, seconds. */
    gone_grace_seconds: z.number().int().min(1).max(7 * 24 * 3600)
      .default(DEFAULT_GONE_GRACE_SECONDS),
    /**
     * Lifetime of the certificates issued to agents, seconds; agents renew at 2/3 of it over
     * mTLS (`POST /v1/nodes/renew`), no join token needed.
     */
    agent_cert_validity_seconds: z.number().int().min(5).max(10 * 365 * 24 * 3600)
      .default(365 * 24 * 3600),
    /** Default join-token lifetime, seconds. */
    join_token_ttl_seconds: z.number().int().min(1).max(7 * 24 * 3600)
      .default(DEFAULT_JOIN_TOKEN_TTL_SECONDS),
  }).strict().prefault({}),
  storage_pools: z.object({
    /** Pool paths must lie under one of these prefixes (boundary-safe). */
    allowed_path_prefixes: z.array(AbsolutePathSchema).min(1)
      .default([DEFAULT_ALLOWED_POOL_PREFIX]),
    /** The pool auto-provisioned on every ready node and set as the cluster default. */
    default_pool_name: ResourceNameSchema.default(DEFAULT_POOL_NAME),
  }).strict().prefault({}),
  workers: z.object({
    /** Run the task workers (dispatch to agents). */
    enabled: z.boolean().default(true),
    /**
     * Fallback poll of a dispatched agent task, milliseconds: agents push task transitions
     * (`/v1/nodes/report`), so this only matters when a report is lost; also the first
     * retry delay of a failed task runner.
     */
    poll_interval_ms: z.number().int().min(50).max(60_000).default(5000),
    /** Lease of a worker's task claims, seconds: a dead worker's tasks move on after this. */
    lease_ttl_seconds: z.number().int().min(1).max(300).default(15),
    /** How often a worker re-reads the queue of active tasks, seconds. */
    resync_seconds: z.number().int().min(1).max(3600).default(10),
    /** Give up on an agent task after this long, seconds. */
    task_timeout_seconds: z.number().int().min(10).max(24 * 3600).default(1800),
    /**
     * Fail a task with `agent_unreachable` after its agent has been unreachable (connection
     * errors) for this long, seconds.
     */
    agent_unreachable_timeout_seconds: z.number().int().min(1).max(3600).default(60),
    /**
     * The periodic scan of every `ready` pool instance (a `pool.scan` task: free space, VM
     * disks and cached images as the agent finds them; disk pressure), cp/pools/scan.ts.
     */
    storage_pool_scan: z.object({
      enabled: z.boolean().default(true),
      /** Seconds between two scans of one instance (spec 001: 15 min; the dev config 1 min). */
      interval_seconds: z.number().int().min(1).max(7 * 24 * 3600)
        .default(DEFAULT_POOL_SCAN_INTERVAL_SECONDS),
    }).strict().prefault({}),
  }).strict().prefault({}),
  vms: z.object({
    /**
     * Restart backoff of the restart policy, seconds: the first restart is immediate, the
     * n-th waits `initial · 2^(n−2)` up to `max`; the count resets after `reset` of steady
     * running (shared/constants.ts DEFAULT_RESTART_BACKOFF).
     */
    restart_backoff_initial_seconds: z.number().int().min(0).max(3600)
      .default(DEFAULT_RESTART_BACKOFF.initialSeconds),
    restart_backoff_max_seconds: z.number().int().min(0).max(24 * 3600)
      .default(DEFAULT_RESTART_BACKOFF.maxSeconds),
    restart_backoff_reset_seconds: z.number().int().min(1).max(7 * 24 * 3600)
      .default(DEFAULT_RESTART_BACKOFF.resetSeconds),
  }).strict().prefault({}),
  images: z.object({
    /**
     * Which image URLs `vm create` accepts (shared/url_policy.ts): IP literals in every form
     * and `localhost` names are judged here; host names are judged by the agent after it
     * resolves them (its own `images.url_policy`). Loopback and link-local refused by default.
     */
    url_policy: UrlPolicySchema.prefault({}),
  }).strict().prefault({}),
  console: z.object({
    /** Lifetime of a single-use console token, seconds. */
    token_ttl_seconds: z.number().int().min(1).max(600).default(DEFAULT_CONSOLE_TOKEN_TTL_SECONDS),
  }).strict().prefault({}),
  placement: z.object({
    /**
     * Scheduler (cp/scheduler.ts): `resource_aware` (LeastAllocated over CPU and memory) or
     * `least_vm_count` (fewest VMs); ties by node name. Any other value fails startup.
     */
    algorithm: z.enum(PLACEMENT_ALGORITHMS).default("resource_aware"),
    /** What placement checks fits for, and how far it may overcommit. */
    resources: z.object({
      cpu: ResourceSettingSchema.prefault({}),
      memory: ResourceSettingSchema.prefault({}),
      disk: ResourceSettingSchema.prefault({}),
    }).strict().prefault({}),
    /** Node-pressure detection (spec 001): pressured nodes take no new VMs. */
    pressure: z.object({
      memory: PressureConfigSchema.prefault({}),
      system_disk: PressureConfigSchema.prefault({}),
      /** Per pool instance, from scans (cp/pools/pressure.ts): 15 % free, one scan. */
      disk: PressureConfigSchema.prefault({
        threshold_percent: DEFAULT_POOL_DISK_PRESSURE.thresholdPercent,
        consecutive_required: DEFAULT_POOL_DISK_PRESSURE.consecutiveRequired,
      }),
    }).strict().prefault({}),
  }).strict().prefault({}),
  log: z.object({
    level: z.enum(["debug", "info", "warn", "error"]).default("info"),
  }).strict().prefault({}),
}).strict().superRefine((cfg, ctx) => {
  if (!!cfg.server.tls_cert_file !== !!cfg.server.tls_key_file) {
    ctx.addIssue({
      code: "custom",
      path: ["server", "tls_cert_file"],
      message: "server.tls_cert_file and server.tls_key_file must be set together",
    });
  }
  if (cfg.workers.enabled && !cfg.agent_client.enabled) {
    ctx.addIssue({ code: "custom", path: ["workers", "enabled"], message: PHASE2_LOCK_MESSAGE });
  }
});

/**
 * Why a config with `workers.enabled: true` and `agent_client.enabled: false` is refused
 * (spec 001 "Phase D": the production config "refuses to start with workers.enabled: true
 * until operators provision real mTLS material (Phase 2 lock)").
 */
export const PHASE2_LOCK_MESSAGE =
  "Phase 2 lock: the task workers dispatch to agents over mTLS and need the agent client; " +
  "set agent_client.enabled: true once its material (the cluster CA and this replica's " +
  "certificate under <data_dir>/pki, issued on the first boot) is in place, or keep " +
  "workers.enabled: false (tasks are then accepted but never run)";
/** A validated control-plane config. */
export type ApiConfig = z.infer<typeof ApiConfigSchema>;

/** Loads and validates the control-plane config file (env overrides applied). */
export function loadApiConfig(path: string): Promise<ApiConfig> {
  return loadConfigFile(ApiConfigSchema, path);
}

/** Parses control-plane config text (for tests). */
export function parseApiConfig(
  text: string,
  getEnv: (n: string) => string | undefined = () => undefined,
): ApiConfig {
  return parseConfig(ApiConfigSchema, text, "api.yaml", getEnv);
}

/**
 * The sandbox roots for this config (see `scripts/permissions.ts`): the config file is the
 * read-only "config" root, the data dir the read-write "state" root; TLS files are extra reads.
 */
export function apiSandboxRoots(
  cfg: ApiConfig,
  configFile: string,
): { config: string; state: string; run: string; extraRead: string[]; extraRun: string[] } {
  const files = [
    cfg.server.tls_cert_file,
    cfg.server.tls_key_file,
    cfg.store.etcd.ca_file,
    cfg.store.etcd.cert_file,
    cfg.store.etcd.key_file,
  ].filter((f): f is string => !!f);
  return {
    config: configFile,
    state: cfg.store.data_dir,
    run: cfg.store.data_dir,
    extraRead: files,
    extraRun: cfg.store.backend === "etcd" ? [cfg.store.etcd.member.binary] : [],
  };
}
