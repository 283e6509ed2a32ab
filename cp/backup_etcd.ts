/**
 * Backups on the etcd backend (issue 11: "`otherix-api backup` on the etcd backend takes an
 * etcd snapshot plus the CA material; restore seeds a new single-member cluster that others
 * then join"). Same file format as the embedded store's (cp/backup_file.ts), so one restore
 * reads both.
 *
 * **Backup** connects to this replica's etcd member (its client URL, TLS with the replica's
 * etcd certificate: cp/cluster/etcd_runtime.ts) and reads every key in one linearizable range,
 * which etcd serves from one MVCC revision: a consistent snapshot of the keyspace while the
 * cluster runs. Keys on leases (task claims, the replica registry, the controller leader) are
 * left out, as on the embedded store. `--without-ca` drops both CA private keys (the cluster
 * CA's and the etcd CA's).
 *
 * **Restore** into an empty data directory seeds a new one-member etcd cluster: both CAs from
 * the backup become this replica's first-boot CAs, its etcd member starts as a new cluster,
 * every key is written (128 per transaction, etcd's default `--max-txn-ops`), the member is
 * stopped. `otherix-api` then starts on it as the first replica, and others join it
 * (`otherix cluster join-token create`). etcd numbers revisions itself: records keep their
 * values, not their old revisions.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { ApiError } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { certFingerprint, keyMatchesCert } from "../shared/pki.ts";
import { exists, writeFileAtomic } from "../shared/fs.ts";
import {
  type Backup,
  BACKUP_FORMAT,
  BACKUP_VERSION,
  type BackupEntry,
  type BackupHeader,
  encodeBackup,
} from "./backup_file.ts";
import type { CreateBackupOptions, CreatedBackup, RestoreResult } from "./backup.ts";
import type { ApiConfig } from "./config.ts";
import { ETCD_CA_KEY, etcdPaths, memberUrls, startEtcdRuntime } from "./cluster/etcd_runtime.ts";
import { readJoinState } from "./cluster/joiner.ts";
import { type HostFacts, hostFacts, pkiPaths } from "./pki.ts";
import { type CaRecord, keys } from "./repo/records.ts";
import { openEtcdStore } from "./store/etcd.ts";
import type { Op } from "./store/store.ts";

/** etcd's default `--max-txn-ops`. */
const TXN_OPS = 128;

/** The CA records whose private keys `--without-ca` drops. */
const CA_KEYS = new Set<string>([keys.ca, ETCD_CA_KEY]);

/**
 * Takes a backup of the etcd cluster this replica's member belongs to (see the module doc).
 *
 * @throws ApiError `store_unavailable` when the member does not answer (is the replica
 *   running?); Error when the data dir has no etcd certificate
 */
export async function createEtcdBackup(
  cfg: ApiConfig,
  opts: CreateBackupOptions = {},
  facts: HostFacts = hostFacts(),
): Promise<CreatedBackup> {
  const paths = etcdPaths(cfg.store.data_dir);
  const read = (p: string) => Deno.readTextFile(p);
  const joined = await readJoinState(cfg.store.data_dir);
  const store = await openEtcdStore({
    endpoints: [...new Set([memberUrls(cfg, facts).client, ...(joined?.endpoints ?? [])])],
    tls: {
      caPem: await read(paths.etcdCa),
      certPem: await read(paths.etcdCert),
      keyPem: await read(paths.etcdKey),
    },
  });
  try {
    const all = await store.range("/");
    const withCa = opts.withCa ?? true;
    let caFingerprint: string | null = null;
    const entries: BackupEntry[] = [];
    let leased = 0;
    for (const kv of all.kvs) {
      if (kv.lease !== null) {
        leased++;
        continue;
      }
      let value = kv.value;
      if (kv.key === keys.ca) caFingerprint = (value as CaRecord).fingerprint;
      if (CA_KEYS.has(kv.key) && !withCa) {
        const { key_pem: _dropped, ...certOnly } = value as CaRecord;
        value = certOnly;
      }
      const meta = { mod: Number(kv.modRevision), cr: Number(kv.createRevision), ver: kv.version };
      entries.push(
        value instanceof Uint8Array
          ? { key: kv.key, enc: "bytes", b64: Buffer.from(value).toString("base64"), ...meta }
          : { key: kv.key, enc: "json", value, ...meta },
      );
    }
    const header: Omit<BackupHeader, "body_sha256" | "keys"> = {
      format: BACKUP_FORMAT,
      version: BACKUP_VERSION,
      created_at: (opts.now ?? new Date()).toISOString(),
      revision: all.revision,
      ca_material: withCa && caFingerprint !== null ? "included" : "excluded",
      ca_fingerprint: caFingerprint,
      leased_keys_skipped: leased,
      source: { data_dir: cfg.store.data_dir, hostname: opts.hostname ?? "unknown" },
    };
    return await encodeBackup(header, entries);
  } finally {
    await store.close();
  }
}

/** A CA with its key from a backup entry. @throws ApiError `validation_failed` without key */
async function caOf(backup: Backup, key: string): Promise<{ certPem: string; keyPem: string }> {
  const rec = backup.entries.find((e) => e.key === key)?.value as CaRecord | undefined;
  if (!rec?.cert_pem) {
    throw new ApiError("validation_failed", `this backup holds no ${key} record`);
  }
  if (!rec.key_pem) {
    throw new ApiError(
      "validation_failed",
      `this backup holds no private key for ${key} (taken with --without-ca): restoring an ` +
        `etcd-backed cluster needs a backup with its CA material`,
    );
  }
  if (!(await keyMatchesCert(rec.key_pem, rec.cert_pem))) {
    throw new ApiError("validation_failed", `${key}: the private key does not match`);
  }
  return { certPem: rec.cert_pem, keyPem: rec.key_pem };
}

/**
 * Restores `backup` as a new one-member etcd cluster in `cfg.store.data_dir` (see the module
 * doc). The directory must hold no cluster (no `pki/ca.crt`, no etcd member).
 *
 * @throws ApiError `conflict` (the data dir holds a cluster), `validation_failed` (no CA
 *   material in the backup), `store_unavailable` (etcd did not start)
 */
export async function restoreEtcdBackup(
  backup: Backup,
  cfg: ApiConfig,
  log: Logger,
  facts: HostFacts = hostFacts(),
): Promise<RestoreResult> {
  const dataDir = cfg.store.data_dir;
  const paths = etcdPaths(dataDir);
  const pki = pkiPaths(dataDir);
  for (const p of [pki.caCert, paths.memberDir]) {
    if (await exists(p)) {
      throw new ApiError(
        "conflict",
        `${dataDir} already holds a cluster (${p}): restore only into an empty data directory`,
      );
    }
  }
  const ca = await caOf(backup, keys.ca);
  const etcdCa = await caOf(backup, ETCD_CA_KEY);
  await Deno.mkdir(pki.dir, { recursive: true, mode: 0o700 });
  // The first-boot CAs of cp/cluster/etcd_runtime.ts: the backup's.
  await writeFileAtomic(paths.bootstrapCas, JSON.stringify({ ca, etcdCa }), 0o600);
  const rt = await startEtcdRuntime(cfg, log, facts);
  try {
    const entries = backup.entries.filter((e) => !CA_KEYS.has(e.key));
    for (let i = 0; i < entries.length; i += TXN_OPS) {
      const ops: Op[] = entries.slice(i, i + TXN_OPS).map((e) => ({
        type: "put",
        key: e.key,
        value: e.enc === "json" ? e.value : new Uint8Array(Buffer.from(e.b64!, "base64")),
      }));
      await rt.store.txn({ compare: [], success: ops });
    }
    const { kvs, revision } = await rt.store.range("/");
    if (kvs.length !== backup.entries.length) {
      throw new ApiError(
        "internal_error",
        `restore: the new cluster holds ${kvs.length} keys, the backup ${backup.entries.length}`,
      );
    }
    return {
      dataDir,
      keys: kvs.length,
      revision,
      caFingerprint: await certFingerprint(ca.certPem),
    };
  } finally {
    await rt.stop();
  }
}
