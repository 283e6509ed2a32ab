/**
 * The joining side of a control-plane join (`otherix-api join --server URL --token T
 * --ca-fingerprint sha256:…`; the serving side is cp/cluster/join.ts):
 *
 * 1. `GET {server}/v1/ca` without trusting anything yet, and the pin: the CA's fingerprint
 *    must be the one given, else the join stops with spec 000's `cluster CA fingerprint
 *    mismatch` (an operator typo, or rarely a man in the middle);
 * 2. a fresh key and CSR for this replica (CN = its name, SANs = its names and addresses);
 * 3. `POST {server}/v1/cluster/join` over TLS verified against the pinned CA, answered only by
 *    a control-plane certificate: the replica certificate and etcd's initial cluster;
 * 4. the material is written under the data dir (`pki/ca.crt`, `pki/cp.crt`, `pki/cp.key`,
 *    and for etcd `pki/etcd-ca.crt`, `pki/etcd.crt`, `pki/etcd.key`; 0600) with the join state
 *    (`cluster.json`), which later starts read: the replica's etcd member starts as a learner
 *    of the existing cluster.
 *
 * A data dir that already holds a join state is joined already (the call only reads it); one
 * that holds a cluster CA of its own is refused (joining needs an empty data dir).
 *
 * @module
 */
import { join } from "node:path";
import { type ClusterJoinResponse, ClusterJoinResponseSchema } from "../../shared/api/cluster.ts";
import { fetchCaUnverified } from "../../shared/ca_fetch.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { ErrorEnvelopeSchema } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import { certFingerprint, createCsr, splitSans } from "../../shared/pki.ts";
import { requestTls } from "../../shared/tls.ts";
import { type HostFacts, hostFacts, pkiPaths, replicaName } from "../pki.ts";
import type { ApiConfig } from "../config.ts";
import { exists, writeFileAtomic } from "../../shared/fs.ts";
import { etcdPaths, memberUrls, replicaSans } from "./etcd_runtime.ts";

/** The join state file under the data dir. */
export const JOIN_STATE_FILE = "cluster.json";

/** What a joined replica keeps (`<data_dir>/cluster.json`). */
export interface JoinState {
  /** The replica (and etcd member) name. */
  name: string;
  peer_url: string;
  client_url: string;
  /** etcd `--initial-cluster` at the join (this member included). */
  initial_cluster: string;
  /** etcd client URLs of the members at the join. */
  endpoints: string[];
  /** `sha256:<hex>` of the cluster CA. */
  ca_fingerprint: string;
  joined_at: string;
}

/** A join that cannot go on; the message is the one to show the operator. */
export class JoinError extends Error {
  override name = "JoinError";
}

/** Options of {@link joinCluster}. */
export interface JoinOptions {
  /** Any live replica's agent URL (`https://host:port`). */
  server: string;
  token: string;
  /** The pin, `sha256:<hex>` (from `otherix cluster join-token create`). */
  caFingerprint: string;
  /** This replica's name. */
  name: string;
  /** Its certificate's SANs (cp/pki.ts `requiredSans`). */
  sans: string[];
  /** Where its etcd member listens for peers and clients (https). */
  peerUrl: string;
  clientUrl: string;
  dataDir: string;
  log: Logger;
  /**
   * Per-request timeout, ms (default 60 000: the serving replica waits up to 30 s for etcd to
   * accept a learner, cp/cluster/join.ts).
   */
  timeoutMs?: number;
}

/** The join state of `dataDir`; null when it has not joined a cluster. */
export async function readJoinState(dataDir: string): Promise<JoinState | null> {
  try {
    return JSON.parse(await Deno.readTextFile(join(dataDir, JOIN_STATE_FILE))) as JoinState;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new JoinError(`cannot read ${join(dataDir, JOIN_STATE_FILE)}: ${(e as Error).message}`);
  }
}

/**
 * Joins the cluster `o.server` belongs to (see the module doc).
 *
 * @returns the join state (written, or already there)
 * @throws JoinError `cluster CA fingerprint mismatch: …`, a refused join (the server's error
 *   code and message: `token_expired`, `token_exhausted`, `unauthenticated`, `conflict`), a
 *   transport failure, or a data dir that holds another cluster
 */
export async function joinCluster(o: JoinOptions): Promise<JoinState> {
  const already = await readJoinState(o.dataDir);
  if (already) {
    o.log.info("join: this data dir has joined a cluster already", { name: already.name });
    return already;
  }
  const pki = pkiPaths(o.dataDir);
  if (await exists(pki.caCert)) {
    throw new JoinError(
      `join: ${pki.caCert} exists: this data dir holds a cluster of its own; a joining ` +
        `replica needs an empty data dir (store.data_dir)`,
    );
  }
  const server = o.server.replace(/\/+$/, "");
  const pinned = o.caFingerprint.toLowerCase();
  const timeoutMs = o.timeoutMs ?? 60_000;
  o.log.info("join: fetching cluster CA", { server, name: o.name });
  let ca;
  try {
    ca = await fetchCaUnverified(server, timeoutMs);
  } catch (e) {
    throw new JoinError(`join: ${(e as Error).message}`);
  }
  const actual = await certFingerprint(ca.ca_pem).catch(() => "unparseable");
  if (actual !== pinned) {
    throw new JoinError(
      `cluster CA fingerprint mismatch: pinned ${pinned}, ${server} presented ${actual}; ` +
        `re-check the pin against the live cluster CA (a fresh join token shows it)`,
    );
  }

  const csr = await createCsr(o.name, splitSans(o.sans));
  let res: Response;
  try {
    res = await requestTls(`${server}/v1/cluster/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        token: o.token,
        name: o.name,
        csr_pem: csr.csrPem,
        peer_url: o.peerUrl,
        client_url: o.clientUrl,
      }),
      tls: { caPem: ca.ca_pem },
      expect: { organization: CP_CERT_ORG },
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    throw new JoinError(`join: POST /v1/cluster/join: ${(e as Error).message}`);
  }
  const text = await res.text();
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch { /* not JSON */ }
  if (!res.ok) {
    const env = ErrorEnvelopeSchema.safeParse(body);
    throw new JoinError(
      env.success
        ? `join refused: ${env.data.error.code}: ${env.data.error.message}`
        : `join refused: HTTP ${res.status}`,
    );
  }
  const parsed = ClusterJoinResponseSchema.safeParse(body);
  if (!parsed.success) throw new JoinError("join: the server's answer is not a join response");
  const answer: ClusterJoinResponse = parsed.data;
  if ((await certFingerprint(answer.ca_pem).catch(() => "")) !== pinned) {
    throw new JoinError("cluster CA fingerprint mismatch: the join answer names another CA");
  }

  await Deno.mkdir(pki.dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(pki.caCert, answer.ca_pem, 0o600);
  await writeFileAtomic(pki.replicaKey, csr.keyPem, 0o600);
  await writeFileAtomic(pki.replicaCert, answer.cert_pem, 0o600);
  const etcd = etcdPaths(o.dataDir);
  await writeFileAtomic(etcd.etcdCa, answer.etcd_ca_pem, 0o600);
  await writeFileAtomic(etcd.etcdKey, csr.keyPem, 0o600);
  await writeFileAtomic(etcd.etcdCert, answer.etcd_cert_pem, 0o600);
  const state: JoinState = {
    name: o.name,
    peer_url: o.peerUrl,
    client_url: o.clientUrl,
    initial_cluster: answer.initial_cluster,
    endpoints: answer.endpoints,
    ca_fingerprint: pinned,
    joined_at: new Date().toISOString(),
  };
  await writeFileAtomic(
    join(o.dataDir, JOIN_STATE_FILE),
    JSON.stringify(state, null, 2) + "\n",
    0o600,
  );
  o.log.info("join: joined as a learner; the promote loop makes it a voter once caught up", {
    name: o.name,
    initial_cluster: answer.initial_cluster,
  });
  return state;
}

/**
 * {@link joinCluster} for the replica `cfg` describes: its name, SANs and etcd member URLs
 * (cp/cluster/etcd_runtime.ts).
 *
 * @throws JoinError as joinCluster; also when `store.backend` is not `etcd`
 */
export async function joinFromConfig(
  cfg: ApiConfig,
  log: Logger,
  o: { server: string; token: string; caFingerprint: string; timeoutMs?: number },
  facts: HostFacts = hostFacts(),
): Promise<JoinState> {
  if (cfg.store.backend !== "etcd") {
    throw new JoinError("a replica joins only with store.backend: etcd in its config");
  }
  const urls = memberUrls(cfg, facts);
  return await joinCluster({
    ...o,
    name: replicaName(cfg, facts),
    sans: replicaSans(cfg, facts),
    peerUrl: urls.peer,
    clientUrl: urls.client,
    dataDir: cfg.store.data_dir,
    log,
  });
}
