/**
 * Cluster PKI on control-plane boot (spec: "Cluster CA + CP server cert auto-generate inside
 * the CP on first boot"; troubleshooting "cluster CA divergence").
 *
 * - The cluster CA (ECDSA P-256) lives in the store (`/cluster/ca`, cert + key) so every
 *   replica shares it; its certificate is also written to `<data_dir>/pki/ca.crt` for
 *   operators. If that file and the store disagree, startup fails with
 *   {@link CaDivergenceError}. The store file, like everything in the data dir, is 0600 in a
 *   0700 directory (cp/store/file_modes.ts), so no other local user reads the CA key.
 * - Each replica has its own certificate (CN = `cp_cert.replica_name` or the hostname,
 *   O = `CP_CERT_ORG`, serverAuth + clientAuth) in `<data_dir>/pki/cp.crt` / `cp.key` (0600),
 *   kept replica-local. It is reused across boots and re-issued when it does not chain to the
 *   active CA, its SANs no longer cover the required set, or it expires within 30 days.
 *
 * @module
 */
import { readTextIfExists, writeFileAtomic } from "../shared/fs.ts";
import { join } from "node:path";
import { CP_CERT_ORG } from "../shared/constants.ts";
import type { Logger } from "../shared/log.ts";
import {
  type CertAndKey,
  certFingerprint,
  certInfo,
  createCa,
  isSignedBy,
  issueServerCert,
  keyMatchesCert,
  splitSans,
} from "../shared/pki.ts";
import type { ApiConfig } from "./config.ts";
import { type CaRecord, keys } from "./repo/records.ts";
import type { Store } from "./store/store.ts";

/** Re-issue the replica certificate when it expires within this many days. */
export const RENEW_BEFORE_DAYS = 30;

/** The on-disk CA certificate disagrees with the store's active CA. */
export class CaDivergenceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CaDivergenceError";
  }
}

/**
 * The troubleshooting reference's message for a cluster CA whose on-disk copy (`diskPath`,
 * fingerprint `diskFp`) differs from the store's ("active etcd CA", `activeFp`), with its
 * recovery (spec 000: "cluster CA divergence: on-disk CA ... does not match active etcd CA").
 * Used at startup and by `otherix-api restore` (cp/backup.ts).
 */
export function caDivergenceMessage(diskPath: string, diskFp: string, activeFp: string): string {
  return `cluster CA divergence: on-disk CA ${diskPath} (${diskFp}) does not match active etcd ` +
    `CA (${activeFp}). Make the two consistent: restore the matching CA (otherix-api restore ` +
    `from a backup of this cluster), or for dev \`make etcd-reset\` (deno task etcd-reset) ` +
    `wipes both together; see README.md "Backups"`;
}

/** Host facts used for the replica certificate's name and SANs. */
export interface HostFacts {
  hostname: string;
  /** Non-loopback interface addresses (used when a listen address is a wildcard). */
  addresses: string[];
}

/** Reads the hostname and global interface addresses (needs `--allow-sys`). */
export function hostFacts(): HostFacts {
  let hostname = "localhost";
  try {
    hostname = Deno.hostname();
  } catch { /* no permission: fall back */ }
  let addresses: string[] = [];
  try {
    addresses = Deno.networkInterfaces()
      .filter((i) => !i.address.startsWith("127.") && i.address !== "::1")
      .filter((i) => !/^fe80:/i.test(i.address))
      .map((i) => i.address);
  } catch { /* no permission: fall back */ }
  return { hostname, addresses };
}

/** Paths of the PKI files under `<data_dir>/pki`. */
export function pkiPaths(dataDir: string) {
  const dir = join(dataDir, "pki");
  return {
    dir,
    caCert: join(dir, "ca.crt"),
    replicaCert: join(dir, "cp.crt"),
    replicaKey: join(dir, "cp.key"),
  };
}

const WILDCARDS = new Set(["0.0.0.0", "::", "", "[::]"]);

/** The replica certificate's CN: `cp_cert.replica_name`, else the hostname. */
export function replicaName(cfg: ApiConfig, facts: HostFacts): string {
  return cfg.cp_cert.replica_name ?? facts.hostname;
}

/**
 * SANs the replica certificate must carry: localhost, 127.0.0.1, ::1, the hostname, the
 * replica name, non-wildcard listen hosts (or the interface addresses when a listen address
 * is a wildcard), `server.advertise_host` (agents dial it: cp/cluster/replicas.ts), and
 * `cp_cert.additional_sans`.
 */
export function requiredSans(cfg: ApiConfig, facts: HostFacts): string[] {
  const names = ["localhost", "127.0.0.1", "::1", facts.hostname, replicaName(cfg, facts)];
  for (const l of [cfg.server.listen, cfg.server.agent_listen]) {
    if (WILDCARDS.has(l.hostname)) names.push(...facts.addresses);
    else names.push(l.hostname);
  }
  if (cfg.server.advertise_host) names.push(cfg.server.advertise_host);
  names.push(...cfg.cp_cert.additional_sans);
  const { dns, ip } = splitSans(names);
  return [...dns, ...ip.map(normalizeIp)];
}

/** Canonical text form of an IP address (IPv6 compressed, lowercase). */
export function normalizeIp(ip: string): string {
  const bare = ip.replace(/^\[|\]$/g, "");
  try {
    const host = new URL(`http://${bare.includes(":") ? `[${bare}]` : bare}/`).hostname;
    return host.replace(/^\[|\]$/g, "");
  } catch {
    return bare.toLowerCase();
  }
}

/** The cluster PKI material a replica runs with. */
export interface ClusterPki {
  ca: CertAndKey;
  /** `sha256:<hex>` of the CA certificate's DER. */
  caFingerprint: string;
  /** This replica's certificate and key (server + client auth, O = CP_CERT_ORG). */
  replica: CertAndKey;
  replicaName: string;
}

/** A CA as the store keeps it (`/cluster/ca`, `/cluster/etcd-ca`): PEMs, fingerprint, time. */
export async function caRecordOf(ca: CertAndKey, now: Date): Promise<CaRecord> {
  return {
    cert_pem: ca.certPem,
    key_pem: ca.keyPem,
    fingerprint: await certFingerprint(ca.certPem),
    created_at: now.toISOString(),
  };
}

/**
 * Loads or creates the cluster CA and this replica's certificate (see the module doc).
 *
 * @throws CaDivergenceError when `<data_dir>/pki/ca.crt` and the store's CA differ (or the
 *   file exists while the store has no CA — its key is not on disk and cannot be recovered)
 */
export async function ensureClusterPki(
  store: Store,
  cfg: ApiConfig,
  log: Logger,
  facts: HostFacts = hostFacts(),
  now: Date = new Date(),
): Promise<ClusterPki> {
  const paths = pkiPaths(cfg.store.data_dir);
  await Deno.mkdir(paths.dir, { recursive: true, mode: 0o700 });

  const diskCa = await readTextIfExists(paths.caCert);
  let stored = (await store.get<CaRecord>(keys.ca))?.value ?? null;
  if (!stored) {
    if (diskCa !== null) {
      const fp = await safeFingerprint(diskCa);
      throw new CaDivergenceError(
        caDivergenceMessage(paths.caCert, fp, "none: the store has no CA") +
          ` (or remove ${paths.dir} to start a new cluster)`,
      );
    }
    const ca = await createCa();
    const rec = await caRecordOf(ca, now);
    const res = await store.txn({
      compare: [{ key: keys.ca, absent: true }],
      success: [{ type: "put", key: keys.ca, value: rec }],
    });
    stored = res.succeeded ? rec : (await store.get<CaRecord>(keys.ca))!.value;
    if (res.succeeded) log.info("cluster CA created", { ca_fingerprint: rec.fingerprint });
  }
  const caFingerprint = await certFingerprint(stored.cert_pem);
  if (diskCa === null) {
    await writeFileAtomic(paths.caCert, stored.cert_pem, 0o600);
  } else {
    const diskFp = await safeFingerprint(diskCa);
    if (diskFp !== caFingerprint) {
      throw new CaDivergenceError(caDivergenceMessage(paths.caCert, diskFp, caFingerprint));
    }
  }
  const ca: CertAndKey = { certPem: stored.cert_pem, keyPem: stored.key_pem };

  const name = replicaName(cfg, facts);
  const sans = requiredSans(cfg, facts);
  const existing = await loadReplica(paths.replicaCert, paths.replicaKey);
  const reason = existing ? await replicaProblem(existing, ca, name, sans, now) : "missing";
  let replica: CertAndKey;
  if (reason === null) {
    replica = existing!;
    log.debug("using existing replica certificate", { replica: name });
  } else {
    replica = await issueServerCert(ca, name, CP_CERT_ORG, splitSans(sans));
    await writeFileAtomic(paths.replicaKey, replica.keyPem, 0o600);
    await writeFileAtomic(paths.replicaCert, replica.certPem, 0o600);
    log.info("replica certificate issued", { replica: name, reason, sans });
  }
  return { ca, caFingerprint, replica, replicaName: name };
}

async function safeFingerprint(pem: string): Promise<string> {
  try {
    return await certFingerprint(pem);
  } catch {
    return "unparseable";
  }
}

async function loadReplica(certPath: string, keyPath: string): Promise<CertAndKey | null> {
  const certPem = await readTextIfExists(certPath);
  const keyPem = await readTextIfExists(keyPath);
  return certPem && keyPem ? { certPem, keyPem } : null;
}

/** Why the replica certificate must be re-issued, or null when it is fine. */
export async function replicaProblem(
  replica: CertAndKey,
  ca: CertAndKey,
  name: string,
  sans: string[],
  now: Date,
): Promise<string | null> {
  try {
    const info = certInfo(replica.certPem);
    if (!(await isSignedBy(replica.certPem, ca.certPem))) return "not signed by the cluster CA";
    if (!(await keyMatchesCert(replica.keyPem, replica.certPem))) return "key does not match";
    if (info.commonName !== name || info.organization !== CP_CERT_ORG) return "subject changed";
    if (info.notAfter.getTime() - now.getTime() < RENEW_BEFORE_DAYS * 24 * 3600 * 1000) {
      return "expires soon";
    }
    const have = new Set(info.sans.map((s) => (/^[\d.]+$|:/.test(s) ? normalizeIp(s) : s)));
    const missing = sans.filter((s) => !have.has(s));
    if (missing.length) return `SANs missing: ${missing.join(", ")}`;
    return null;
  } catch (e) {
    return `unreadable: ${(e as Error).message}`;
  }
}
