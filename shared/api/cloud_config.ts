/**
 * The rules for what a VM's cloud-init input may be, shared by the control plane's request
 * schema (shared/api/vms.ts), the agent's and the CLI's manifest validation, so what one
 * refuses, every caller refuses first:
 *
 * - user-data is cloud-config: the first line is `#cloud-config` (cloud-init's marker for this
 *   format; trailing blanks allowed), the rest one YAML document that is a mapping or empty,
 *   parsed as YAML 1.1 like cloud-init's PyYAML does; a top-level `ssh_authorized_keys`, when
 *   present, is a list of strings (the control plane appends keys to it);
 * - an SSH public key is one OpenSSH `authorized_keys`-style line, `<type> <base64> [comment]`,
 *   without options, whose base64 blob is the wire encoding of a key of that type (RFC 4253
 *   §6.6, RFC 5656 §3.1, RFC 8709 §4, OpenSSH PROTOCOL.u2f): a truncated or mistyped key is
 *   refused, never handed to the guest.
 *
 * @module
 */
import { type Document, isMap, isScalar, isSeq, parseAllDocuments, parseDocument } from "yaml";

/** The first line of cloud-config user-data. */
export const CLOUD_CONFIG_HEADER = "#cloud-config";
/** Longest accepted SSH public key line, characters (an 16384-bit RSA key is ~2.8 KiB). */
export const MAX_SSH_KEY_LENGTH = 8192;
/** Most SSH keys one VM create may carry. */
export const MAX_SSH_KEYS = 32;
/** Smallest accepted RSA modulus, bits (OpenSSH refuses smaller keys). */
export const MIN_RSA_BITS = 1024;

/**
 * Key types accepted, with the fields their blob holds after the type string: `string` (any
 * length, or exactly `len` bytes), `mpint`, `curve` (the curve name the type implies).
 */
const KEY_LAYOUTS: Record<string, { fields: Field[] }> = {
  "ssh-ed25519": { fields: [{ kind: "string", len: 32 }] },
  "ssh-rsa": { fields: [{ kind: "mpint" }, { kind: "mpint", rsaModulus: true }] },
  "ecdsa-sha2-nistp256": { fields: [{ kind: "curve", curve: "nistp256" }, { kind: "string" }] },
  "ecdsa-sha2-nistp384": { fields: [{ kind: "curve", curve: "nistp384" }, { kind: "string" }] },
  "ecdsa-sha2-nistp521": { fields: [{ kind: "curve", curve: "nistp521" }, { kind: "string" }] },
  "sk-ssh-ed25519@openssh.com": { fields: [{ kind: "string", len: 32 }, { kind: "string" }] },
  "sk-ecdsa-sha2-nistp256@openssh.com": {
    fields: [{ kind: "curve", curve: "nistp256" }, { kind: "string" }, { kind: "string" }],
  },
};

type Field =
  | { kind: "string"; len?: number }
  | { kind: "mpint"; rsaModulus?: boolean }
  | { kind: "curve"; curve: string };

/** The SSH key types {@link sshPublicKeyProblem} accepts. */
export const SSH_KEY_TYPES: readonly string[] = Object.keys(KEY_LAYOUTS);

/**
 * Why `key` is not an acceptable SSH public key line, or null when it is (see the module doc).
 * The message never repeats the key material.
 */
export function sshPublicKeyProblem(key: string): string | null {
  if (key.length > MAX_SSH_KEY_LENGTH) return `must be at most ${MAX_SSH_KEY_LENGTH} characters`;
  if (key.includes("PRIVATE KEY")) return "is a private key: pass the public key (.pub)";
  if (/[\r\n\0]/.test(key)) return "must be a single line";
  const parts = key.trim().split(/[ \t]+/);
  if (parts.length < 2 || parts[0] === "") {
    return "must be '<type> <base64 key> [comment]' (one line of a .pub file)";
  }
  const [type, b64] = parts;
  const layout = KEY_LAYOUTS[type];
  if (!layout) {
    return `unsupported key type ${JSON.stringify(type.slice(0, 64))} ` +
      `(supported: ${SSH_KEY_TYPES.join(", ")}; options before the type are not allowed)`;
  }
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    return "the key is not valid base64";
  }
  const blob = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const reader = new BlobReader(blob);
  const blobType = reader.string();
  if (blobType === null) return "the key is truncated";
  if (new TextDecoder().decode(blobType) !== type) {
    return `the key's data does not match its type ${type}`;
  }
  for (const field of layout.fields) {
    const value = reader.string();
    if (value === null) return "the key is truncated";
    if (field.kind === "string" && field.len !== undefined && value.length !== field.len) {
      return `the key is ${value.length} bytes, ${type} keys are ${field.len}`;
    }
    if (field.kind === "curve" && new TextDecoder().decode(value) !== field.curve) {
      return `the key's curve does not match its type ${type}`;
    }
    if (field.kind === "mpint" && field.rsaModulus) {
      const bits = mpintBits(value);
      if (bits < MIN_RSA_BITS) return `the RSA key has ${bits} bits, at least ${MIN_RSA_BITS}`;
    }
  }
  if (!reader.done) return "the key has trailing data";
  return null;
}

/** Reads RFC 4251 `string`s (uint32 length + bytes) from a key blob. */
class BlobReader {
  #off = 0;
  constructor(readonly buf: Uint8Array) {}

  /** The next string, or null when the blob ends early. */
  string(): Uint8Array | null {
    if (this.#off + 4 > this.buf.length) return null;
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.#off, 4);
    const len = v.getUint32(0);
    this.#off += 4;
    if (this.#off + len > this.buf.length) return null;
    const out = this.buf.subarray(this.#off, this.#off + len);
    this.#off += len;
    return out;
  }

  get done(): boolean {
    return this.#off === this.buf.length;
  }
}

/** Significant bits of a non-negative RFC 4251 mpint (big-endian, leading zero allowed). */
function mpintBits(v: Uint8Array): number {
  let i = 0;
  while (i < v.length && v[i] === 0) i++;
  if (i === v.length) return 0;
  return (v.length - i - 1) * 8 + (32 - Math.clz32(v[i]));
}

/** A parsed cloud-config: the YAML document after the header line. */
export interface CloudConfig {
  /** The document (YAML 1.1; `contents` is a mapping, or null when empty). */
  doc: Document;
}

/**
 * Parses cloud-config user-data (see the module doc).
 *
 * @returns the document (comments kept, for a faithful re-serialisation), or `{problem}` saying
 *   why `text` is not cloud-config (with the line number for YAML errors, the header being
 *   line 1)
 */
export function parseCloudConfig(text: string): CloudConfig | { problem: string } {
  const nl = text.indexOf("\n");
  const first = (nl < 0 ? text : text.slice(0, nl)).replace(/[ \t\r]+$/, "");
  if (first !== CLOUD_CONFIG_HEADER) {
    return {
      problem: `must be cloud-config: the first line must be '${CLOUD_CONFIG_HEADER}'` +
        (first.startsWith("#!") ? " (shell-script user-data is not accepted)" : ""),
    };
  }
  const body = nl < 0 ? "" : text.slice(nl + 1);
  if (parseAllDocuments(body, { version: "1.1" }).length > 1) {
    return { problem: "must hold one YAML document, not several" };
  }
  const doc = parseDocument(body, { version: "1.1" });
  const err = doc.errors[0];
  if (err) {
    const line = err.linePos?.[0]?.line;
    const what = err.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
    // Lines count from the header, line 1.
    return { problem: `is not valid YAML${line ? ` at line ${line + 1}` : ""}: ${what}` };
  }
  if (doc.contents !== null && !isMap(doc.contents)) {
    return { problem: "must be a YAML mapping (key: value pairs) after the header" };
  }
  const keys = isMap(doc.contents) ? doc.contents.get("ssh_authorized_keys", true) : undefined;
  if (keys !== undefined && keys !== null) {
    const ok = isSeq(keys) &&
      keys.items.every((i) => isScalar(i) && typeof i.value === "string");
    if (!ok) return { problem: "ssh_authorized_keys must be a list of strings" };
  }
  return { doc };
}

/** Why `text` is not acceptable cloud-config user-data, or null when it is. */
export function cloudConfigProblem(text: string): string | null {
  const r = parseCloudConfig(text);
  return "problem" in r ? r.problem : null;
}
