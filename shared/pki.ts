/**
 * X.509 for the cluster: the cluster CA, per-replica control-plane certificates, agent CSRs
 * and their signing. ECDSA P-256 with SHA-256 throughout (WebCrypto + `@peculiar/x509`).
 *
 * Keys travel as PKCS#8 PEM (`PRIVATE KEY`), certificates as `CERTIFICATE` PEM, CSRs as
 * PKCS#10 `CERTIFICATE REQUEST` PEM (RFC 2986). Fingerprints are `sha256:<hex>` of the DER.
 *
 * @module
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createHash } from "node:crypto";
import { ApiError } from "./errors.ts";

x509.cryptoProvider.set(crypto);

const EC_ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const SIGN_ALG = { name: "ECDSA", hash: "SHA-256" } as const;

/** A certificate with its private key, both PEM. */
export interface CertAndKey {
  certPem: string;
  keyPem: string;
}

/** Generates an extractable ECDSA P-256 key pair. */
export async function generateKeyPair(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(EC_ALG, true, ["sign", "verify"]) as CryptoKeyPair;
}

/** PKCS#8 PEM of a private key. */
export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/** Imports a PKCS#8 PEM ECDSA P-256 private key (for signing). */
export async function importPrivateKeyPem(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  return await crypto.subtle.importKey("pkcs8", der, EC_ALG, false, ["sign"]);
}

/** `sha256:<hex>` of a PEM certificate's DER encoding. */
export async function certFingerprint(certPem: string): Promise<string> {
  const cert = new x509.X509Certificate(certPem);
  const digest = await crypto.subtle.digest("SHA-256", cert.rawData);
  return "sha256:" + toHex(new Uint8Array(digest));
}

/** Lowercase hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomSerial(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[0] &= 0x7f; // positive INTEGER (RFC 5280 §4.1.2.2)
  return toHex(b);
}

const DAY_MS = 24 * 3600 * 1000;

/**
 * Creates the self-signed cluster CA (CN `otherix cluster CA`, 10 years, pathLen 0).
 */
export async function createCa(commonName = "otherix cluster CA"): Promise<CertAndKey> {
  const keys = await generateKeyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=${escapeDn(commonName)}`,
    notBefore: new Date(now - 5 * 60 * 1000),
    notAfter: new Date(now + 3650 * DAY_MS),
    signingAlgorithm: SIGN_ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem"), keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/** Subject alternative names split by kind. */
export interface SanSet {
  dns: string[];
  ip: string[];
}

const IPV4_RE = /^\d{1,3}(\.\d{1,3}){3}$/;

/** Sorts names into DNS and IP SANs (IPv4 dotted quads and IPv6 literals are IPs). */
export function splitSans(names: Iterable<string>): SanSet {
  const dns = new Set<string>();
  const ip = new Set<string>();
  for (const raw of names) {
    const n = raw.trim().replace(/^\[|\]$/g, "");
    if (!n) continue;
    if (IPV4_RE.test(n) || n.includes(":")) ip.add(n);
    else dns.add(n.toLowerCase());
  }
  return { dns: [...dns], ip: [...ip] };
}

/** The SubjectAltName entries of a SAN set. */
function altNamesOf(sans: SanSet): x509.JsonGeneralName[] {
  return [
    ...sans.dns.map((value) => ({ type: "dns" as const, value })),
    ...sans.ip.map((value) => ({ type: "ip" as const, value })),
  ];
}

interface IssueOptions {
  ca: CertAndKey;
  publicKey: CryptoKey;
  commonName: string;
  organization: string;
  sans: SanSet;
  validityDays: number;
}

/** Clock-skew allowance: how far `notBefore` is backdated, ms (5 min, at most validity/10). */
export function backdateMs(validityDays: number): number {
  return Math.min(5 * 60 * 1000, (validityDays * DAY_MS) / 10);
}

async function issue(opts: IssueOptions): Promise<string> {
  const caCert = new x509.X509Certificate(opts.ca.certPem);
  const caKey = await importPrivateKeyPem(opts.ca.keyPem);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${escapeDn(opts.commonName)}, O=${escapeDn(opts.organization)}`,
    issuer: caCert.subject,
    // Backdated for clock skew, but never by most of a short (test) lifetime: an agent renews
    // at 2/3 of notBefore..notAfter, which a 5-minute backdate would put in the past.
    notBefore: new Date(now - backdateMs(opts.validityDays)),
    notAfter: new Date(now + opts.validityDays * DAY_MS),
    signingAlgorithm: SIGN_ALG,
    publicKey: opts.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      // Both roles: agents serve the CP and call it; CP replicas serve agents and call them.
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension(altNamesOf(opts.sans)),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return cert.toString("pem");
}

/**
 * Issues a control-plane replica certificate (CN = replica name, O = `organization`) with
 * a fresh key, valid for `validityDays` (default 825).
 */
export async function issueServerCert(
  ca: CertAndKey,
  commonName: string,
  organization: string,
  sans: SanSet,
  validityDays = 825,
): Promise<CertAndKey> {
  const keys = await generateKeyPair();
  const certPem = await issue({
    ca,
    publicKey: keys.publicKey,
    commonName,
    organization,
    sans,
    validityDays,
  });
  return { certPem, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/**
 * Creates a PKCS#10 CSR for `commonName` requesting `sans`; returns the CSR and its key.
 */
export async function createCsr(
  commonName: string,
  sans: SanSet,
): Promise<{ csrPem: string; keyPem: string }> {
  const keys = await generateKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${escapeDn(commonName)}`,
    keys,
    signingAlgorithm: SIGN_ALG,
    extensions: [new x509.SubjectAlternativeNameExtension(altNamesOf(sans))],
  });
  return { csrPem: csr.toString("pem"), keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/** Most DNS/IP SANs a CSR may request. */
export const MAX_CSR_SANS = 32;

/**
 * A DNS name a CSR may request: dot-separated labels of letters, digits, `-` and `_` (seen in
 * real host names), at most 253 characters; no wildcard, space or `:`.
 */
const DNS_SAN_RE =
  /^(?=.{1,253}$)[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?(\.[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?)*$/i;

/** Why a CSR's public key is refused (only ECDSA P-256 and RSA ≥ 2048 bits), or null. */
function keyProblem(alg: Algorithm & { namedCurve?: string; modulusLength?: number }) {
  if (alg.name === "ECDSA") return alg.namedCurve === "P-256" ? null : `curve ${alg.namedCurve}`;
  if (alg.name === "RSASSA-PKCS1-v1_5") {
    return (alg.modulusLength ?? 0) >= 2048 ? null : `${alg.modulusLength}-bit RSA`;
  }
  return alg.name;
}

/**
 * Verifies a CSR's self-signature and signs it with the CA. The subject is NOT taken from
 * the CSR: the CA sets CN = `commonName` (the node name the join token authorizes) and
 * O = `organization`. DNS/IP SANs the CSR requests are copied (the agent's advertised host),
 * plus `commonName` as a DNS SAN; other SAN types are ignored.
 *
 * @param validityDays certificate lifetime, days (default 365)
 * @returns the certificate, PEM
 * @throws ApiError `validation_failed` when the CSR is malformed, its key is not ECDSA P-256
 *   or RSA ≥ 2048 bits, its signature does not verify, or it requests a DNS SAN that is not a
 *   plain host name (wildcards included) or more than {@link MAX_CSR_SANS} SANs
 */
export async function signCsr(
  ca: CertAndKey,
  csrPem: string,
  commonName: string,
  organization: string,
  validityDays = 365,
): Promise<string> {
  const invalid = (why: string) => new ApiError("validation_failed", `csr_pem: ${why}`);
  let csr: x509.Pkcs10CertificateRequest;
  let publicKey: CryptoKey;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (e) {
    throw invalid(`not a PKCS#10 CSR: ${(e as Error).message}`);
  }
  let keyWhy: string | null;
  try {
    keyWhy = keyProblem(csr.publicKey.algorithm);
  } catch {
    keyWhy = "unknown algorithm";
  }
  if (keyWhy !== null) {
    throw invalid(`unsupported key (${keyWhy}); use ECDSA P-256 or RSA >= 2048 bits`);
  }
  try {
    if (!(await csr.verify())) throw new Error("bad signature");
    publicKey = await csr.publicKey.export(crypto);
  } catch {
    throw invalid("CSR signature does not verify");
  }
  const requested: string[] = [];
  const ext = csr.extensions.find((e) => e instanceof x509.SubjectAlternativeNameExtension) as
    | x509.SubjectAlternativeNameExtension
    | undefined;
  for (const n of ext?.names.items ?? []) {
    const badQuad = IPV4_RE.test(n.value) && n.value.split(".").some((o) => Number(o) > 255);
    if (n.type === "dns" && (!DNS_SAN_RE.test(n.value) || badQuad)) {
      throw invalid(`requested DNS SAN ${JSON.stringify(n.value)} is not a host name`);
    }
    if (n.type === "dns" || n.type === "ip") requested.push(n.value);
  }
  if (requested.length > MAX_CSR_SANS) {
    throw invalid(`requests ${requested.length} SANs (max ${MAX_CSR_SANS})`);
  }
  const sans = splitSans([commonName, ...requested]);
  return await issue({ ca, publicKey, commonName, organization, sans, validityDays });
}

/** Subject fields and validity of a PEM certificate. */
export interface CertInfo {
  commonName: string | null;
  organization: string | null;
  /** Start of validity. */
  notBefore: Date;
  notAfter: Date;
  sans: string[];
}

/** Reads CN, O, SANs and validity of a PEM certificate. @throws on an unparseable PEM */
export function certInfo(certPem: string): CertInfo {
  const cert = new x509.X509Certificate(certPem);
  const name = cert.subjectName;
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  return {
    commonName: name.getField("CN")[0] ?? null,
    organization: name.getField("O")[0] ?? null,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    sans: san?.names.items.map((n) => n.value) ?? [],
  };
}

/**
 * The subject CN a PKCS#10 CSR asks for (null when it names none).
 *
 * @throws ApiError `validation_failed` when `csrPem` is not a CSR
 */
export function csrCommonName(csrPem: string): string | null {
  try {
    return new x509.Pkcs10CertificateRequest(csrPem).subjectName.getField("CN")[0] ?? null;
  } catch (e) {
    throw new ApiError("validation_failed", `csr_pem: not a PKCS#10 CSR: ${(e as Error).message}`);
  }
}

/**
 * `sha256:<hex>` of DER bytes (a TLS peer certificate's `raw`), synchronously (node:crypto:
 * the agent port computes it on every request); see {@link certFingerprint}.
 */
export function derFingerprintSync(der: Uint8Array): string {
  return "sha256:" + createHash("sha256").update(der).digest("hex");
}

/** True when `certPem` was signed by the CA certificate `caPem`. */
export async function isSignedBy(certPem: string, caPem: string): Promise<boolean> {
  const cert = new x509.X509Certificate(certPem);
  const ca = new x509.X509Certificate(caPem);
  return await cert.verify({ publicKey: ca.publicKey, signatureOnly: true });
}

/** True when the PEM private key matches the PEM certificate's public key. */
export async function keyMatchesCert(keyPem: string, certPem: string): Promise<boolean> {
  const key = await importPrivateKeyPem(keyPem);
  const cert = new x509.X509Certificate(certPem);
  const data = crypto.getRandomValues(new Uint8Array(32));
  const sig = await crypto.subtle.sign(SIGN_ALG, key, data);
  const pub = await cert.publicKey.export(EC_ALG, ["verify"], crypto);
  return await crypto.subtle.verify(SIGN_ALG, pub, sig, data);
}

function escapeDn(value: string): string {
  return value.replace(/([,+"\\<>;=])/g, "\\$1");
}
