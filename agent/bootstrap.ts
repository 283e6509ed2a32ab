/**
 * Agent identity: existing cert material, or the join-token bootstrap protocol
 * (spec: developer guide "Step 1 — run seed-dev", troubleshooting "Bootstrap failures";
 * shared/api/nodes.ts).
 *
 * Cert dir `<state>/certs`: `agent.crt`, `agent.key`, `ca.crt`.
 * - cert and key present: reuse them (`agent: using existing cert material`); the node name
 *   is the certificate's CN.
 * - exactly one of them present: fatal partial state (`cert <path> exists but key <path>
 *   missing`, or vice-versa); the operator deletes the orphan and re-runs bootstrap.
 * - neither: bootstrap. `GET {cp_url}/v1/ca` (the CA is not trusted yet, so this one call
 *   skips TLS verification), pin the CA by its `sha256:` fingerprint, then trust only that
 *   CA: generate a key + CSR and redeem the join token at `POST {cp_url}/v1/nodes/bootstrap`.
 *   The served `ca_pem` must be exactly one certificate: the pin covers one certificate, and
 *   any extra one in a bundle would be trusted too (by this client, and by the agent's mTLS
 *   server once written to `ca.crt`).
 *
 * Write order: `ca.crt`, then `agent.key`, then `agent.crt`, each atomically (temp file,
 * fsync, rename). The certificate is written last, so a crash can leave a key without a
 * certificate (reported as partial state) but never a certificate without its key.
 *
 * Renewal (agent/renew.ts) leaves `agent.key.next` / `agent.crt.next` when a crash interrupts
 * it; every start first completes or discards them (`finishInterruptedRenewal`).
 *
 * @module
 */
import { join } from "node:path";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../shared/constants.ts";
import { BootstrapResponseSchema, type CaResponse } from "../shared/api/nodes.ts";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import {
  certFingerprint,
  certInfo,
  createCsr,
  isSignedBy,
  keyMatchesCert,
  splitSans,
} from "../shared/pki.ts";
import { requestTls } from "../shared/tls.ts";
import { fetchCaUnverified as fetchCa } from "../shared/ca_fetch.ts";
import { type AgentConfig, agentPaths } from "./config.ts";
import { errorMessage, writeFileAtomic } from "./fsutil.ts";
import { hostName } from "./sysinfo.ts";

/** Largest `/v1/ca` response read before the CA is pinned, bytes. */
export { MAX_CA_RESPONSE_BYTES } from "../shared/ca_fetch.ts";

/** A fatal bootstrap failure; `message` is what the operator sees. */
export class BootstrapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BootstrapError";
  }
}

/** The agent's mTLS identity. */
export interface AgentIdentity {
  /** The node name: the certificate's CN. */
  nodeName: string;
  certPem: string;
  keyPem: string;
  caPem: string;
  /** True when this start ran the bootstrap protocol. */
  bootstrapped: boolean;
}

/** Paths of the cert material in `certDir`. */
export interface CertFiles {
  cert: string;
  key: string;
  ca: string;
  /** A renewed certificate not yet moved over `cert` (agent/renew.ts). */
  nextCert: string;
  /** A renewed key not yet moved over `key` (agent/renew.ts). */
  nextKey: string;
}

/** Paths of the cert material in `certDir`. */
export function certFiles(certDir: string): CertFiles {
  return {
    cert: join(certDir, "agent.crt"),
    key: join(certDir, "agent.key"),
    ca: join(certDir, "ca.crt"),
    nextCert: join(certDir, "agent.crt.next"),
    nextKey: join(certDir, "agent.key.next"),
  };
}

/** Test seams of {@link bootstrap}. */
export interface BootstrapOptions {
  /** The host name (default `Deno.hostname()`). */
  hostname?: () => string;
  /** Timeout of each bootstrap HTTP call, ms (default 15 000). */
  timeoutMs?: number;
}

/** The host the control plane dials: `server.advertise_url`'s host, else the host name. */
export function advertiseHost(cfg: AgentConfig, hostname: () => string = hostName): string {
  return cfg.server.advertise_url
    ? new URL(cfg.server.advertise_url).hostname.replace(/^\[|\]$/g, "")
    : hostname();
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new BootstrapError(`bootstrap: cannot read ${path}: ${errorMessage(e)}`);
  }
}

/**
 * Loads or obtains the agent identity.
 *
 * @throws BootstrapError (fatal) on partial cert state, missing bootstrap settings, an
 *   unreachable CP (`bootstrap: fetch /v1/ca: …`), a CA fingerprint mismatch
 *   (`bootstrap: CA fingerprint mismatch (expected sha256:… got sha256:…)`), a rejected CSR
 *   (`bootstrap: CSR submission rejected by CP: HTTP <status> <code>`), or
 *   unwritable cert files
 */
export async function bootstrap(
  cfg: AgentConfig,
  log: Logger,
  opts: BootstrapOptions = {},
): Promise<AgentIdentity> {
  const paths = agentPaths(cfg);
  const files = certFiles(paths.certDir);
  await finishInterruptedRenewal(files, log);
  const [certPem, keyPem, caPem] = await Promise.all([
    readIfExists(files.cert),
    readIfExists(files.key),
    readIfExists(files.ca),
  ]);
  if (certPem !== null && keyPem === null) {
    throw new BootstrapError(
      `partial bootstrap state: cert ${files.cert} exists but key ${files.key} missing`,
    );
  }
  if (keyPem !== null && certPem === null) {
    throw new BootstrapError(
      `partial bootstrap state: key ${files.key} exists but cert ${files.cert} missing`,
    );
  }
  if (certPem !== null && keyPem !== null) {
    return await useExisting(files, certPem, keyPem, caPem, log);
  }
  return await runBootstrap(cfg, files, log, opts);
}

/**
 * Completes a certificate renewal that a crash interrupted (agent/renew.ts writes
 * `agent.key.next` and `agent.crt.next`, then renames them over `agent.key` and `agent.crt`):
 * when `agent.crt.next` is signed by the CA and matches `agent.key.next` (or `agent.key`, already
 * renamed), the renames are finished; otherwise the leftovers are removed (the renewal never
 * completed, the current pair is intact). Both cases are logged as warnings.
 *
 * @throws BootstrapError when the files cannot be read, renamed or removed
 */
async function finishInterruptedRenewal(files: CertFiles, log: Logger): Promise<void> {
  const [nextCert, nextKey, key, ca] = await Promise.all(
    [files.nextCert, files.nextKey, files.key, files.ca].map(readIfExists),
  );
  if (nextCert === null && nextKey === null) return;
  const fits = async (k: string | null) => {
    try {
      return k !== null && ca !== null && nextCert !== null &&
        await keyMatchesCert(k, nextCert) && await isSignedBy(nextCert, ca);
    } catch {
      return false;
    }
  };
  try {
    if (await fits(nextKey)) {
      await Deno.rename(files.nextKey, files.key);
      await Deno.rename(files.nextCert, files.cert);
    } else if (nextKey === null && await fits(key)) {
      await Deno.rename(files.nextCert, files.cert);
    } else {
      for (const f of [files.nextCert, files.nextKey]) {
        await Deno.remove(f).catch((e) => {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        });
      }
      log.warn("bootstrap: removed leftovers of an interrupted certificate renewal", {
        cert: files.cert,
      });
      return;
    }
  } catch (e) {
    throw new BootstrapError(
      `bootstrap: cannot complete an interrupted certificate renewal in ${files.cert}: ${
        errorMessage(e)
      }`,
    );
  }
  log.warn("bootstrap: completed an interrupted certificate renewal", { cert: files.cert });
}

async function useExisting(
  files: CertFiles,
  certPem: string,
  keyPem: string,
  caPem: string | null,
  log: Logger,
): Promise<AgentIdentity> {
  if (caPem === null) {
    throw new BootstrapError(
      `partial bootstrap state: cert ${files.cert} and key ${files.key} exist but CA ${files.ca} missing`,
    );
  }
  let cn: string | null;
  try {
    cn = certInfo(certPem).commonName;
    if (!(await keyMatchesCert(keyPem, certPem))) {
      throw new BootstrapError(
        `partial bootstrap state: key ${files.key} does not match cert ${files.cert}`,
      );
    }
    if (!(await isSignedBy(certPem, caPem))) {
      throw new BootstrapError(
        `partial bootstrap state: cert ${files.cert} is not signed by CA ${files.ca}`,
      );
    }
  } catch (e) {
    if (e instanceof BootstrapError) throw e;
    throw new BootstrapError(
      `bootstrap: unreadable cert material in ${files.cert}: ${errorMessage(e)}`,
    );
  }
  if (!cn) throw new BootstrapError(`bootstrap: cert ${files.cert} has no CN`);
  await tightenKeyMode(files.key, log);
  log.info("agent: using existing cert material", { node: cn, cert: files.cert });
  return { nodeName: cn, certPem, keyPem, caPem, bootstrapped: false };
}

/**
 * Makes the private key file mode 0600 when it is readable or writable by group or others
 * (e.g. restored from a backup), logging a warning.
 *
 * @throws BootstrapError when the mode cannot be read or changed
 */
async function tightenKeyMode(path: string, log: Logger): Promise<void> {
  try {
    const mode = (await Deno.stat(path)).mode;
    if (mode === null || (mode & 0o077) === 0) return;
    await Deno.chmod(path, 0o600);
    log.warn("bootstrap: private key was accessible to other users; mode set to 0600", {
      key: path,
      was: "0" + (mode & 0o777).toString(8),
    });
  } catch (e) {
    throw new BootstrapError(`bootstrap: cannot restrict mode of ${path}: ${errorMessage(e)}`);
  }
}

/**
 * `GET {cpUrl}/v1/ca` without verifying the server (shared/ca_fetch.ts: the caller pins the CA).
 *
 * @throws BootstrapError `bootstrap: fetch /v1/ca: <error>`
 */
export async function fetchCaUnverified(cpUrl: string, timeoutMs = 15_000): Promise<CaResponse> {
  try {
    return await fetchCa(cpUrl, timeoutMs);
  } catch (e) {
    throw new BootstrapError(`bootstrap: ${errorMessage(e)}`);
  }
}

async function runBootstrap(
  cfg: AgentConfig,
  files: CertFiles,
  log: Logger,
  opts: BootstrapOptions,
): Promise<AgentIdentity> {
  const paths = agentPaths(cfg);
  const { cp_url: cpUrl, ca_fingerprint: pinned } = cfg.bootstrap;
  if (!cpUrl || !pinned) {
    const missing = [!cpUrl && "bootstrap.cp_url", !pinned && "bootstrap.ca_fingerprint"]
      .filter(Boolean).join(" and ");
    throw new BootstrapError(
      `bootstrap: no cert material in ${paths.certDir} and ${missing} not set ` +
        `(set them in ${paths.envFile} or the config)`,
    );
  }
  let token: string;
  try {
    token = (await Deno.readTextFile(paths.tokenFile)).trim();
  } catch (e) {
    throw new BootstrapError(
      `bootstrap: cannot read join token ${paths.tokenFile}: ${errorMessage(e)}`,
    );
  }
  if (!token) throw new BootstrapError(`bootstrap: join token file ${paths.tokenFile} is empty`);
  const hostname = opts.hostname ?? hostName;
  const requestedName = cfg.bootstrap.node_name ?? hostname();
  const timeoutMs = opts.timeoutMs ?? 15_000;

  log.info("bootstrap: fetching cluster CA", { cp_url: cpUrl, node: requestedName });
  const ca = await fetchCaUnverified(cpUrl, timeoutMs);
  const blocks = ca.ca_pem.match(/-----BEGIN [^-\r\n]*-----/g) ?? [];
  if (blocks.length !== 1 || blocks[0] !== "-----BEGIN CERTIFICATE-----") {
    throw new BootstrapError(
      `bootstrap: fetch /v1/ca: served CA must be exactly one PEM certificate, got ${blocks.length} PEM blocks`,
    );
  }
  let actual: string;
  try {
    actual = await certFingerprint(ca.ca_pem);
  } catch (e) {
    throw new BootstrapError(
      `bootstrap: fetch /v1/ca: served CA is not a certificate: ${errorMessage(e)}`,
    );
  }
  if (actual !== pinned.toLowerCase()) {
    throw new BootstrapError(
      `bootstrap: CA fingerprint mismatch (expected ${pinned.toLowerCase()} got ${actual})`,
    );
  }
  if (ca.fingerprint !== actual) {
    throw new BootstrapError(
      `bootstrap: CA fingerprint mismatch (served fingerprint ${ca.fingerprint} does not match the served CA ${actual})`,
    );
  }

  const sans = splitSans([advertiseHost(cfg, hostname), requestedName, "localhost", "127.0.0.1"]);
  const csr = await createCsr(requestedName, sans);
  let res: Response;
  try {
    // Only the pinned CA, and only a control-plane certificate: the token goes nowhere else.
    res = await requestTls(cpUrl.replace(/\/+$/, "") + "/v1/nodes/bootstrap", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token, csr_pem: csr.csrPem }),
      tls: { caPem: ca.ca_pem },
      expect: { organization: CP_CERT_ORG },
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    throw new BootstrapError(`bootstrap protocol: POST /v1/nodes/bootstrap: ${errorMessage(e)}`);
  }
  const text = await res.text();
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const env = ErrorEnvelopeSchema.safeParse(body);
    const code = env.success ? env.data.error.code : "unknown_error";
    const detail = env.success ? ` (${env.data.error.message})` : "";
    throw new BootstrapError(
      `bootstrap: CSR submission rejected by CP: HTTP ${res.status} ${code}${detail}`,
    );
  }
  const parsed = BootstrapResponseSchema.safeParse(body);
  if (!parsed.success) {
    throw new BootstrapError("bootstrap protocol: CP returned an invalid bootstrap response");
  }
  const certPem = parsed.data.certificate_pem;
  const issued = certInfo(certPem);
  if (!(await isSignedBy(certPem, ca.ca_pem)) || !(await keyMatchesCert(csr.keyPem, certPem))) {
    throw new BootstrapError(
      "bootstrap protocol: CP returned a certificate not signed by the pinned CA or not for our key",
    );
  }
  if (issued.organization !== AGENT_CERT_ORG || !issued.commonName) {
    throw new BootstrapError(
      `bootstrap protocol: issued certificate has subject CN=${issued.commonName} O=${issued.organization}, expected O=${AGENT_CERT_ORG}`,
    );
  }
  const nodeName = issued.commonName;
  if (nodeName !== requestedName) {
    log.warn("bootstrap: the join token names a different node; using the certificate's CN", {
      requested: requestedName,
      node: nodeName,
    });
  }

  try {
    await Deno.mkdir(paths.certDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(files.ca, ca.ca_pem, 0o644);
    await writeFileAtomic(files.key, csr.keyPem, 0o600);
    await writeFileAtomic(files.cert, certPem, 0o644);
  } catch (e) {
    throw new BootstrapError(
      `bootstrap: cannot write cert material to ${paths.certDir}: ${errorMessage(e)}`,
    );
  }
  log.info("agent: bootstrap complete", { node: nodeName, cert: files.cert });
  return { nodeName, certPem, keyPem: csr.keyPem, caPem: ca.ca_pem, bootstrapped: true };
}
