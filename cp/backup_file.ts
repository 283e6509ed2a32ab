/**
 * The backup file format of `otherix-api backup` / `restore` (cp/backup.ts): UTF-8 JSON lines.
 *
 * - Line 1, the header ({@link BackupHeader}): format and version, when and from where it was
 *   taken, the store revision of the snapshot, the key count, whether the cluster CA's private
 *   key is inside (`ca_material: "included" | "excluded"`) and the CA's fingerprint either way,
 *   and the SHA-256 of everything after the header line. `head -n 1 FILE` shows it.
 * - Then one {@link BackupEntry} per store key, in key order: the key, its value (JSON data as
 *   JSON, raw bytes as base64) and its etcd metadata (mod/create revision, version), so a
 *   restored store continues at the same revisions.
 *
 * The file holds password hashes, token hashes, the JWT signing secret and (unless excluded)
 * the CA private key: it is written with mode 0600.
 *
 * @module
 */
import { z } from "zod";
import { ApiError } from "../shared/errors.ts";
import { toHex } from "../shared/pki.ts";

/** `format` of every backup header. */
export const BACKUP_FORMAT = "otherix-backup";
/** The format version this code writes and reads. */
export const BACKUP_VERSION = 1;

/** The header line. */
export const BackupHeaderSchema = z.object({
  format: z.literal(BACKUP_FORMAT),
  version: z.literal(BACKUP_VERSION),
  /** When the snapshot was taken (ISO 8601). */
  created_at: z.string(),
  /** Store revision the snapshot shows (decimal string; etcd semantics, cp/store/store.ts). */
  revision: z.string().regex(/^\d+$/),
  /** Number of entry lines. */
  keys: z.number().int().min(0),
  /** Whether the cluster CA's private key is in the file (`--without-ca` leaves it out). */
  ca_material: z.enum(["included", "excluded"]),
  /** `sha256:<hex>` of the cluster CA certificate (null: the store had no CA yet). */
  ca_fingerprint: z.string().nullable(),
  /** Keys on leases (task claims, console tickets) are ephemeral and left out: how many. */
  leased_keys_skipped: z.number().int().min(0),
  /** The data directory the snapshot was taken from, and the host. */
  source: z.object({ data_dir: z.string(), hostname: z.string() }),
  /** Lowercase hex SHA-256 of the bytes after the header line. */
  body_sha256: z.string().regex(/^[0-9a-f]{64}$/),
}).strict();
/** The header line. */
export type BackupHeader = z.infer<typeof BackupHeaderSchema>;

/** One store key. */
export const BackupEntrySchema = z.object({
  key: z.string().min(1),
  /** JSON data (`enc: "json"`, `value`) or raw bytes (`enc: "bytes"`, base64 `b64`). */
  enc: z.enum(["json", "bytes"]),
  value: z.unknown().optional(),
  b64: z.string().optional(),
  /** Revision of the key's last write. */
  mod: z.number().int().min(0),
  /** Revision of the write that created it. */
  cr: z.number().int().min(0),
  /** Writes since it was created (≥ 1). */
  ver: z.number().int().min(1),
}).strict().refine((e) => (e.enc === "json") === (e.b64 === undefined), {
  message: "json entries carry value, bytes entries carry b64",
});
/** One store key. */
export type BackupEntry = z.infer<typeof BackupEntrySchema>;

/** A parsed backup. */
export interface Backup {
  header: BackupHeader;
  entries: BackupEntry[];
}

const enc = new TextEncoder();

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource)));
}

/**
 * Serializes a backup; `header.body_sha256` and `header.keys` are computed here.
 *
 * @returns the file's bytes and the complete header
 */
export async function encodeBackup(
  header: Omit<BackupHeader, "body_sha256" | "keys">,
  entries: BackupEntry[],
): Promise<{ bytes: Uint8Array; header: BackupHeader }> {
  const body = enc.encode(entries.map((e) => JSON.stringify(e) + "\n").join(""));
  const full: BackupHeader = {
    ...header,
    keys: entries.length,
    body_sha256: await sha256Hex(body),
  };
  const head = enc.encode(JSON.stringify(full) + "\n");
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return { bytes: out, header: full };
}

/**
 * Parses and checks a backup file (`source` names it in errors).
 *
 * @throws ApiError `validation_failed` when it is not an Otherix backup, has another version,
 *   was truncated or altered (checksum, key count) or has a malformed line
 */
export async function decodeBackup(bytes: Uint8Array, source: string): Promise<Backup> {
  const bad = (why: string) =>
    new ApiError("validation_failed", `${source}: not a usable Otherix backup: ${why}`);
  const nl = bytes.indexOf(0x0a);
  if (nl < 0) throw bad("no header line");
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes.subarray(0, nl)));
  } catch {
    throw bad("the first line is not a JSON header");
  }
  const r = raw as Record<string, unknown>;
  if (r?.format !== BACKUP_FORMAT) throw bad(`format is ${JSON.stringify(r?.format)}`);
  if (r.version !== BACKUP_VERSION) {
    throw bad(`version ${r.version} (this otherix-api reads version ${BACKUP_VERSION})`);
  }
  const head = BackupHeaderSchema.safeParse(raw);
  if (!head.success) {
    const i = head.error.issues[0];
    throw bad(`header ${i.path.join(".")}: ${i.message}`);
  }
  const body = bytes.subarray(nl + 1);
  if ((await sha256Hex(body)) !== head.data.body_sha256) {
    throw bad("checksum mismatch (truncated or altered)");
  }
  const lines = new TextDecoder().decode(body).split("\n");
  if (lines.pop() !== "") throw bad("the last line is incomplete");
  const entries: BackupEntry[] = [];
  for (const [i, line] of lines.entries()) {
    let parsed;
    try {
      parsed = BackupEntrySchema.safeParse(JSON.parse(line));
    } catch {
      throw bad(`line ${i + 2} is not JSON`);
    }
    if (!parsed.success) throw bad(`line ${i + 2}: ${parsed.error.issues[0].message}`);
    entries.push(parsed.data);
  }
  if (entries.length !== head.data.keys) {
    throw bad(`${entries.length} entries, the header says ${head.data.keys}`);
  }
  return { header: head.data, entries };
}
