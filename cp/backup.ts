/**
 * Backups of the embedded store (spec 000 "cluster CA divergence … See Certificates and
 * Backups"): `otherix-api backup` takes a consistent snapshot while the control plane runs,
 * `otherix-api restore` writes it into an empty data directory (cp/backup_cli.ts parses the
 * commands; cp/backup_file.ts is the file format).
 *
 * **Consistent snapshot of a live store.** The store (cp/store/kv.ts) is a Deno KV file that
 * several handles may write; every commit that changes a key bumps one revision counter and
 * appends the changed keys to a change log. The snapshot opens its own handle and:
 * 1. reads the counter (r0), every key, the counter again (r1). Equal: nothing committed in
 *    between, so the keys are the store at r0;
 * 2. otherwise only the keys the change log names for (r0, r1] may be stale: it re-reads those
 *    and reads the counter again, and repeats with the keys changed meanwhile until a re-read
 *    saw no commit. Then every key shows the store at one revision (each key was read after the
 *    last change to it and no change happened since). If compaction removed the log it needs,
 *    it starts over.
 *
 * Keys on leases (task claims, console tickets) belong to the processes holding the leases and
 * are left out: a restored control plane's workers claim the active tasks again.
 *
 * **Restore** writes the keys with their revisions and sets the store's revision (and its
 * compact revision: no history before it) to the snapshot's, so records, their mod revisions
 * and `GET /v1/events?since=` stay comparable. It refuses a data directory that holds a store,
 * and a backup whose CA is not the one on disk (`<data_dir>/pki/ca.crt`) with the
 * troubleshooting reference's CA divergence message. A backup taken `--without-ca` lacks the
 * CA's private key: restore it with `--ca-from` a backup of the same cluster that has it.
 *
 * This module reads and writes the Deno KV layout of cp/store/kv_layout.ts directly (a
 * snapshot at one revision and writing revisions are not part of the Store interface).
 *
 * @module
 */
import { exists } from "../shared/fs.ts";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import { certFingerprint, keyMatchesCert } from "../shared/pki.ts";
import {
  BACKUP_FORMAT,
  BACKUP_VERSION,
  type BackupEntry,
  type BackupHeader,
  encodeBackup,
} from "./backup_file.ts";
import type { Backup } from "./backup_file.ts";
import { caDivergenceMessage, pkiPaths } from "./pki.ts";
import { type CaRecord, keys } from "./repo/records.ts";
import {
  C,
  CHUNK_BYTES,
  COMPACT_KEY,
  concat,
  E,
  type Encoding,
  type Envelope,
  type EventRecord,
  K,
  REV_KEY,
} from "./store/kv_layout.ts";
import { openKvStore } from "./store/kv.ts";

/** The store file inside a data directory. */
export const STORE_FILE = "store.kv";

/** One key as read from the store. */
export interface SnapshotKey {
  key: string;
  enc: Encoding;
  /** The encoded value (JSON text or raw bytes). */
  bytes: Uint8Array;
  ver: number;
  mod: number;
  cr: number;
  lease: string | null;
}

/** The store at one revision. */
export interface StoreSnapshot {
  /** The revision every key shows. */
  revision: number;
  /** Keys not on a lease, in key order. */
  keys: SnapshotKey[];
  /** Leased keys left out. */
  leasedSkipped: number;
  /** Re-read rounds it took (0: the first read was already consistent). */
  rounds: number;
}

/** Options of {@link snapshotStore}. */
export interface SnapshotOptions {
  /** Give up after this long, ms (default 60 000). */
  timeoutMs?: number;
  /** Called after the first full read, before the counter is read again (tests race it). */
  afterFullRead?: () => Promise<void>;
}

/**
 * Takes a consistent snapshot of the store file `path` (see the module doc); safe while the
 * control plane runs.
 *
 * @throws ApiError `store_unavailable` when there is no store at `path`, or it kept changing
 *   for `timeoutMs`
 */
export async function snapshotStore(
  path: string,
  opts: SnapshotOptions = {},
): Promise<StoreSnapshot> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ApiError("store_unavailable", `no store at ${path}: check store.data_dir`);
    }
    throw e;
  }
  const kv = await Deno.openKv(path);
  try {
    return await snapshotKv(kv, opts);
  } finally {
    kv.close();
  }
}

async function counter(kv: Deno.Kv, key: Deno.KvKey): Promise<number> {
  return (await kv.get<number>(key)).value ?? 0;
}

/** A key's envelope and chunks read in one Deno KV snapshot (null: absent). */
async function readKey(kv: Deno.Kv, key: string, n: number): Promise<SnapshotKey | null> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const ks: Deno.KvKey[] = [[K, key]];
    for (let i = 1; i < n; i++) ks.push([C, key, i]);
    const got = await kv.getMany<unknown[]>(ks);
    const head = got[0].value as Envelope | null;
    if (head === null) return null;
    if (head.n !== n) {
      n = head.n;
      continue;
    }
    const chunks = got.slice(1).map((g) => g.value as Uint8Array);
    return {
      key,
      enc: head.enc,
      bytes: concat([head.d, ...chunks]),
      ver: head.ver,
      mod: head.mod ?? 0,
      cr: head.cr ?? 0,
      lease: head.lease,
    };
  }
  throw new ApiError("store_unavailable", `backup: ${key} keeps changing`);
}

/** Re-reads `names` (one Deno KV snapshot per 10 keys) into `map`. */
async function reread(kv: Deno.Kv, names: Iterable<string>, map: Map<string, SnapshotKey>) {
  const all = [...names];
  for (let i = 0; i < all.length; i += 10) {
    const batch = all.slice(i, i + 10);
    const heads = await kv.getMany<Envelope[]>(batch.map((k) => [K, k]));
    for (const [j, name] of batch.entries()) {
      const head = heads[j].value;
      const got = head === null ? null : head.n === 1
        ? {
          key: name,
          enc: head.enc,
          bytes: head.d,
          ver: head.ver,
          mod: head.mod ?? 0,
          cr: head.cr ?? 0,
          lease: head.lease,
        }
        : await readKey(kv, name, head.n);
      if (got) map.set(name, got);
      else map.delete(name);
    }
  }
}

/**
 * Keys the change log names for revisions (a, b]; null when compaction removed part of it.
 */
async function changedKeys(kv: Deno.Kv, a: number, b: number): Promise<Set<string> | null> {
  const names = new Set<string>();
  const sel = { start: [E, a + 1], end: [E, b + 1] };
  for await (const e of kv.list<EventRecord>(sel, { batchSize: 500 })) names.add(e.value.key);
  // Read after the log: compaction only moves forward, so ≤ a here means (a, b] was intact.
  return (await counter(kv, COMPACT_KEY)) > a ? null : names;
}

async function snapshotKv(kv: Deno.Kv, opts: SnapshotOptions): Promise<StoreSnapshot> {
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  let rounds = 0;
  while (Date.now() < deadline) {
    const map = new Map<string, SnapshotKey>();
    const r0 = await counter(kv, REV_KEY);
    for await (const e of kv.list<Envelope>({ prefix: [K] }, { batchSize: 500 })) {
      const name = e.key[1] as string;
      const env = e.value;
      const got = env.n === 1
        ? {
          key: name,
          enc: env.enc,
          bytes: env.d,
          ver: env.ver,
          mod: env.mod ?? 0,
          cr: env.cr ?? 0,
          lease: env.lease,
        }
        : await readKey(kv, name, env.n);
      if (got) map.set(name, got);
    }
    await opts.afterFullRead?.();
    let base = r0;
    let next = await counter(kv, REV_KEY);
    let restart = false;
    // Invariant: every key not in `stale` shows the store at `next`.
    while (next !== base) {
      if (Date.now() >= deadline) break;
      const stale = await changedKeys(kv, base, next);
      if (!stale) {
        restart = true;
        break;
      }
      rounds++;
      base = next;
      await reread(kv, stale, map);
      next = await counter(kv, REV_KEY);
    }
    if (restart) continue;
    if (next !== base) break;
    const all = [...map.values()].sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
    const kept = all.filter((k) => k.lease === null);
    return { revision: base, keys: kept, leasedSkipped: all.length - kept.length, rounds };
  }
  throw new ApiError(
    "store_unavailable",
    "backup: the store kept changing; no consistent snapshot within the time limit (retry, or " +
      "take it while the control plane is less busy)",
  );
}

const dec = new TextDecoder();
const enc = new TextEncoder();

function entryOf(k: SnapshotKey): BackupEntry {
  const meta = { mod: k.mod, cr: k.cr, ver: k.ver };
  return k.enc === "json"
    ? { key: k.key, enc: "json", value: JSON.parse(dec.decode(k.bytes)), ...meta }
    : { key: k.key, enc: "bytes", b64: Buffer.from(k.bytes).toString("base64"), ...meta };
}

/** Options of {@link createBackup}. */
export interface CreateBackupOptions {
  /** Include the cluster CA's private key (default true). */
  withCa?: boolean;
  /** Clock for `created_at`. */
  now?: Date;
  /** Host name recorded in the header. */
  hostname?: string;
  /** Snapshot options. */
  snapshot?: SnapshotOptions;
}

/** A backup with what it holds. */
export interface CreatedBackup {
  /** The file's bytes. */
  bytes: Uint8Array;
  header: BackupHeader;
}

/**
 * Takes a backup of the store in `dataDir` (consistent while the control plane runs).
 *
 * @throws ApiError `store_unavailable` (see {@link snapshotStore})
 */
export async function createBackup(
  dataDir: string,
  opts: CreateBackupOptions = {},
): Promise<CreatedBackup> {
  const snap = await snapshotStore(join(dataDir, STORE_FILE), opts.snapshot);
  const withCa = opts.withCa ?? true;
  let caFingerprint: string | null = null;
  const entries = snap.keys.map((k) => {
    const e = entryOf(k);
    if (e.key !== keys.ca) return e;
    const ca = e.value as CaRecord;
    caFingerprint = ca.fingerprint;
    if (withCa) return e;
    const { key_pem: _dropped, ...certOnly } = ca;
    return { ...e, value: certOnly };
  });
  if (caFingerprint === null) {
    // The CA record keeps the fingerprint; recompute it when an old record lacks it.
    const ca = snap.keys.find((k) => k.key === keys.ca);
    if (ca) caFingerprint = await certFingerprint(JSON.parse(dec.decode(ca.bytes)).cert_pem);
  }
  const header: Omit<BackupHeader, "body_sha256" | "keys"> = {
    format: BACKUP_FORMAT,
    version: BACKUP_VERSION,
    created_at: (opts.now ?? new Date()).toISOString(),
    revision: String(snap.revision),
    ca_material: withCa && caFingerprint !== null ? "included" : "excluded",
    ca_fingerprint: caFingerprint,
    leased_keys_skipped: snap.leasedSkipped,
    source: { data_dir: dataDir, hostname: opts.hostname ?? "unknown" },
  };
  return await encodeBackup(header, entries);
}

/** Options of {@link restoreBackup}. */
export interface RestoreOptions {
  /** A backup of the same cluster with its CA material, for a backup taken without it. */
  caFrom?: Backup;
}

/** What a restore wrote. */
export interface RestoreResult {
  dataDir: string;
  keys: number;
  revision: string;
  caFingerprint: string | null;
}

/** The CA record a restore writes: the backup's, completed from `caFrom` when needed. */
async function caRecordFor(backup: Backup, caFrom?: Backup): Promise<CaRecord | null> {
  const entry = backup.entries.find((e) => e.key === keys.ca);
  if (!entry) return null;
  const rec = entry.value as CaRecord;
  if (rec.key_pem) return rec;
  const fp = backup.header.ca_fingerprint ?? rec.fingerprint;
  if (!caFrom) {
    throw new ApiError(
      "validation_failed",
      `this backup holds no CA private key (taken with --without-ca): pass --ca-from FILE, a ` +
        `backup of the same cluster taken with its CA material (CA ${fp})`,
    );
  }
  const other = caFrom.entries.find((e) => e.key === keys.ca)?.value as CaRecord | undefined;
  if (!other?.key_pem) {
    throw new ApiError("validation_failed", "--ca-from: that backup holds no CA private key");
  }
  const otherFp = await certFingerprint(other.cert_pem);
  if (otherFp !== fp) {
    throw new ApiError(
      "conflict",
      `--ca-from: its CA (${otherFp}) is not this backup's CA (${fp}): use a backup of the ` +
        `same cluster`,
    );
  }
  return { ...rec, cert_pem: other.cert_pem, key_pem: other.key_pem };
}

/** Deno KV limits one commit to 1000 mutations and 800 KiB; stay well below. */
const BATCH_MUTATIONS = 400;
const BATCH_BYTES = 500_000;

/**
 * Restores `backup` into `dataDir` (created 0700 if missing), which must hold no store. Files
 * it creates get the data directory's owner (a root restore for a control plane that runs as
 * the `otherix` user).
 *
 * @throws ApiError `conflict` when `dataDir` holds a store, or its on-disk CA
 *   (`pki/ca.crt`) differs from the backup's (CA divergence); `validation_failed` when the CA
 *   private key is missing (see {@link RestoreOptions.caFrom}) or does not match the CA
 */
export async function restoreBackup(
  backup: Backup,
  dataDir: string,
  opts: RestoreOptions = {},
): Promise<RestoreResult> {
  const storePath = join(dataDir, STORE_FILE);
  for (const f of [storePath, `${storePath}-wal`, `${storePath}-shm`]) {
    if (await exists(f)) {
      throw new ApiError(
        "conflict",
        `${dataDir} already holds a store (${f}): restore only into an empty data directory ` +
          `(stop otherix-api and move the directory away first)`,
      );
    }
  }
  const ca = await caRecordFor(backup, opts.caFrom);
  const fp = ca ? await certFingerprint(ca.cert_pem) : null;
  if (ca && !(await keyMatchesCert(ca.key_pem, ca.cert_pem))) {
    throw new ApiError("validation_failed", "the CA private key does not match its certificate");
  }
  const diskCa = pkiPaths(dataDir).caCert;
  if (await exists(diskCa)) {
    let diskFp: string;
    try {
      diskFp = await certFingerprint(await Deno.readTextFile(diskCa));
    } catch {
      diskFp = "unparseable";
    }
    if (diskFp !== fp) {
      throw new ApiError(
        "conflict",
        caDivergenceMessage(diskCa, diskFp, fp ? `${fp}, in the backup` : "none in the backup"),
      );
    }
  }

  await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const tmp = join(dataDir, `${STORE_FILE}.restoring-${crypto.randomUUID()}`);
  const kv = await Deno.openKv(tmp);
  try {
    let atomic = kv.atomic();
    let mutations = 0;
    let bytes = 0;
    const flush = async () => {
      if (mutations === 0) return;
      const res = await atomic.commit();
      if (!res.ok) throw new ApiError("internal_error", "restore: a write to the new store failed");
      atomic = kv.atomic();
      mutations = 0;
      bytes = 0;
    };
    for (const e of backup.entries) {
      const value = e.key === keys.ca && ca ? ca : e.value;
      const data = e.enc === "json"
        ? enc.encode(JSON.stringify(value))
        : new Uint8Array(Buffer.from(e.b64!, "base64"));
      const chunks: Uint8Array[] = [];
      for (let off = 0; off < data.length || chunks.length === 0; off += CHUNK_BYTES) {
        chunks.push(data.slice(off, off + CHUNK_BYTES));
      }
      if (mutations + chunks.length > BATCH_MUTATIONS || bytes + data.length > BATCH_BYTES) {
        await flush();
      }
      const env: Envelope = {
        ver: e.ver,
        lease: null,
        n: chunks.length,
        enc: e.enc,
        d: chunks[0],
        mod: e.mod,
        cr: e.cr,
      };
      atomic.set([K, e.key], env);
      for (let i = 1; i < chunks.length; i++) atomic.set([C, e.key, i], chunks[i]);
      mutations += chunks.length;
      bytes += data.length;
    }
    await flush();
    const rev = Number(backup.header.revision);
    const done = await kv.atomic().set(REV_KEY, rev).set(COMPACT_KEY, rev).commit();
    if (!done.ok) throw new ApiError("internal_error", "restore: writing the revision failed");
  } catch (e) {
    kv.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  kv.close();
  for (const suffix of ["-wal", "-shm"]) {
    if (await exists(tmp + suffix)) {
      throw new ApiError("internal_error", `restore: ${tmp}${suffix} was left behind`);
    }
  }
  await Deno.chmod(tmp, 0o600);
  await Deno.rename(tmp, storePath);

  // Read it back through the store itself.
  const store = await openKvStore(storePath);
  try {
    const rev = await store.currentRevision();
    const { kvs } = await store.range("");
    if (rev !== backup.header.revision || kvs.length !== backup.entries.length) {
      throw new ApiError(
        "internal_error",
        `restore: the new store reads ${kvs.length} keys at revision ${rev}, expected ` +
          `${backup.entries.length} at ${backup.header.revision}`,
      );
    }
  } finally {
    await store.close();
    await giveToOwnerOf(dataDir, [storePath]);
  }
  return {
    dataDir,
    keys: backup.entries.length,
    revision: backup.header.revision,
    caFingerprint: fp,
  };
}

/** Chowns `files` to the owner of `dir` when they differ (a root restore). */
async function giveToOwnerOf(dir: string, files: string[]): Promise<void> {
  const owner = await Deno.stat(dir);
  if (owner.uid === null || owner.gid === null) return;
  for (const f of files) {
    for (const path of [f, `${f}-wal`, `${f}-shm`]) {
      let st: Deno.FileInfo;
      try {
        st = await Deno.stat(path);
      } catch {
        continue;
      }
      if (st.uid !== owner.uid || st.gid !== owner.gid) {
        await Deno.chown(path, owner.uid, owner.gid);
      }
    }
  }
}
