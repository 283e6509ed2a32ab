/**
 * The etcd backend at start-up (`store.backend: etcd`, issue 11): this replica's supervised
 * etcd member (cp/cluster/etcd_member.ts), the store on it (cp/store/etcd.ts), the membership
 * admin and the promote loop, and the cluster interface the API serves members and joins from.
 *
 * **Two CAs.** etcd trusts its own CA (`pki/etcd-ca.crt`), which issues only to control-plane
 * replicas (`pki/etcd.crt`, O = `otherix:etcd`). The cluster CA also issues to every agent,
 * and etcd 3.4 cannot tell an agent's certificate from a replica's on its JSON gateway, so a
 * shared CA would let any node read the store (the CA key, the JWT keys). Both CA keys live in
 * the store (`/cluster/ca`, `/cluster/etcd-ca`), readable by replicas only.
 *
 * **First replica.** With no cluster CA on disk and no join state, it creates both CAs,
 * keeps them in `pki/bootstrap-cas.json` (0600) until they are in the store (a crash in between
 * resumes from that file instead of reporting a CA divergence), issues its etcd certificate,
 * starts etcd as a new one-member cluster, opens the store, seeds the CAs and removes the file.
 * A restore (cp/backup_etcd.ts) writes that file with the backup's CAs and takes this path.
 *
 * **Joined replica.** `otherix-api join` (cp/cluster/joiner.ts) left the CA certificates, its
 * certificates and `cluster.json` (etcd's initial cluster, the members' client URLs): its
 * member starts as a learner of that cluster. etcd ignores the initial-cluster flags once its
 * data exists, so later starts are the same call.
 *
 * @module
 */
import { join } from "node:path";
import type { Logger } from "../../shared/log.ts";
import {
  type CertAndKey,
  certFingerprint,
  createCa,
  issueServerCert,
  splitSans,
} from "../../shared/pki.ts";
import { readTextIfExists, writeFileAtomic } from "../../shared/fs.ts";
import { ApiError } from "../../shared/errors.ts";
import type { ApiConfig } from "../config.ts";
import { caRecordOf, type HostFacts, pkiPaths, replicaName, requiredSans } from "../pki.ts";
import { type CaRecord, keys } from "../repo/records.ts";
import { openEtcdStore } from "../store/etcd.ts";
import type { Store } from "../store/store.ts";
import { EtcdAdmin, type EtcdMemberHealth, retryPassingRefusals } from "./etcd_admin.ts";
import { EtcdMember } from "./etcd_member.ts";
import type { EtcdCluster, StoreMember } from "./members.ts";
import { PromoteLoop } from "./promote.ts";
import { readJoinState } from "./joiner.ts";
import { advertiseHost } from "./replicas.ts";

/** The store key of the etcd CA (a {@link CaRecord}). */
export const ETCD_CA_KEY = "/cluster/etcd-ca";
/** Subject organization of the etcd certificates the etcd CA issues to replicas. */
export const ETCD_CERT_ORG = "otherix:etcd";

/** The etcd files under `<data_dir>/pki` and the member's directory. */
export function etcdPaths(dataDir: string) {
  const pki = pkiPaths(dataDir).dir;
  return {
    etcdCa: join(pki, "etcd-ca.crt"),
    etcdCert: join(pki, "etcd.crt"),
    etcdKey: join(pki, "etcd.key"),
    /** Both CAs with their keys, until they are in the store (first replica only). */
    bootstrapCas: join(pki, "bootstrap-cas.json"),
    memberDir: join(dataDir, "etcd"),
  };
}

/** `https://host:port` (IPv6 literals bracketed). */
function httpsUrl(host: string, port: number): string {
  return `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** The member's advertised URLs. */
export function memberUrls(cfg: ApiConfig, facts: HostFacts): { client: string; peer: string } {
  const host = advertiseHost(cfg, facts);
  const m = cfg.store.etcd.member;
  return { client: httpsUrl(host, m.client_port), peer: httpsUrl(host, m.peer_port) };
}

/** The SANs of this replica's certificates: the replica's, plus the advertised host. */
export function replicaSans(cfg: ApiConfig, facts: HostFacts): string[] {
  return [...new Set([...requiredSans(cfg, facts), advertiseHost(cfg, facts)])];
}

/** The running etcd side of a replica. */
export interface EtcdRuntime {
  store: Store;
  /** Members, joins and removals for the API (cp/cluster/members.ts, join.ts). */
  cluster: EtcdCluster;
  member: EtcdMember;
  /** Stops the promote loop, the admin client, the store and the member, in that order. */
  stop(): Promise<void>;
}

interface BootstrapCas {
  ca: CertAndKey;
  etcdCa: CertAndKey;
}

/**
 * Starts this replica's etcd member and opens the store on it (see the module doc).
 *
 * @throws ApiError `store_unavailable` when etcd does not come up or answer; Error when the
 *   data dir has a cluster CA but no etcd certificate (a data dir from the embedded store)
 */
export async function startEtcdRuntime(
  cfg: ApiConfig,
  log: Logger,
  facts: HostFacts,
  now: () => Date = () => new Date(),
): Promise<EtcdRuntime> {
  const dataDir = cfg.store.data_dir;
  const pki = pkiPaths(dataDir);
  const paths = etcdPaths(dataDir);
  const name = replicaName(cfg, facts);
  const urls = memberUrls(cfg, facts);
  await Deno.mkdir(pki.dir, { recursive: true, mode: 0o700 });

  const joined = await readJoinState(dataDir);
  let pending: BootstrapCas | null = null;
  const pendingText = await readTextIfExists(paths.bootstrapCas);
  if (pendingText !== null) pending = JSON.parse(pendingText) as BootstrapCas;
  if (!joined && !pending && (await readTextIfExists(pki.caCert)) === null) {
    pending = { ca: await createCa(), etcdCa: await createCa("otherix etcd CA") };
    await writeFileAtomic(paths.bootstrapCas, JSON.stringify(pending), 0o600);
    log.info("cluster: new cluster: CAs created", {
      ca_fingerprint: await certFingerprint(pending.ca.certPem),
    });
  }
  // First boot (new, restored, or resumed after a crash): the CA certificates on disk.
  if (pending) {
    if ((await readTextIfExists(pki.caCert)) === null) {
      await writeFileAtomic(pki.caCert, pending.ca.certPem, 0o600);
    }
    if ((await readTextIfExists(paths.etcdCa)) === null) {
      await writeFileAtomic(paths.etcdCa, pending.etcdCa.certPem, 0o600);
    }
  }
  if ((await readTextIfExists(paths.etcdCert)) === null) {
    if (!pending) {
      throw new Error(
        `${paths.etcdCert} is missing: this data dir was not set up for store.backend: etcd ` +
          `(a replica joins with otherix-api join; the first one starts from an empty data dir)`,
      );
    }
    const cert = await issueServerCert(
      pending.etcdCa,
      name,
      ETCD_CERT_ORG,
      splitSans(replicaSans(cfg, facts)),
    );
    await writeFileAtomic(paths.etcdKey, cert.keyPem, 0o600);
    await writeFileAtomic(paths.etcdCert, cert.certPem, 0o600);
  }

  const m = cfg.store.etcd.member;
  const member = new EtcdMember({
    binary: m.binary,
    name,
    dataDir: paths.memberDir,
    clientUrl: urls.client,
    peerUrl: urls.peer,
    tls: { caFile: paths.etcdCa, certFile: paths.etcdCert, keyFile: paths.etcdKey },
    initialCluster: joined?.initial_cluster ?? `${name}=${urls.peer}`,
    initialClusterState: joined ? "existing" : "new",
    log,
    timings: { heartbeatMs: m.heartbeat_ms, electionMs: m.election_ms },
    // History as long as the embedded store keeps (else it grows until etcd's quota makes
    // the cluster read-only), and room for large transactions.
    extraArgs: [
      "--auto-compaction-mode=revision",
      "--auto-compaction-retention=10000",
      "--max-txn-ops=1024",
    ],
  });
  try {
    await member.start();
  } catch (e) {
    throw new ApiError("store_unavailable", `etcd member did not start: ${(e as Error).message}`);
  }
  const tls = {
    caPem: (await readTextIfExists(paths.etcdCa))!,
    certPem: (await readTextIfExists(paths.etcdCert))!,
    keyPem: (await readTextIfExists(paths.etcdKey))!,
  };
  const endpoints = [...new Set([urls.client, ...(joined?.endpoints ?? [])])];
  let store: Store;
  try {
    store = await openEtcdStore({
      endpoints,
      tls,
      requestTimeoutMs: m.request_timeout_seconds * 1000,
    });
  } catch (e) {
    await member.stop();
    throw e;
  }
  if (pending) {
    // Seed the CAs (first replica); an existing CA in the store wins, and the on-disk check
    // (cp/pki.ts) then reports any divergence.
    for (const [key, ca] of [[keys.ca, pending.ca], [ETCD_CA_KEY, pending.etcdCa]] as const) {
      await store.txn({
        compare: [{ key, absent: true }],
        success: [{ type: "put", key, value: await caRecordOf(ca, now()) }],
      });
    }
    await Deno.remove(paths.bootstrapCas);
  }

  const admin = new EtcdAdmin({ endpoints, tls });
  const promote = new PromoteLoop({
    membership: admin,
    log,
    intervalMs: m.promote_interval_seconds * 1000,
  });
  promote.start();
  const cluster: EtcdCluster = {
    async members(): Promise<StoreMember[]> {
      const status = await admin.clusterStatus();
      const waits = new Map(promote.learners().map((w) => [w.id, w]));
      return status.members.map((m) => ({
        ...storeMemberOf(m),
        learnerSince: waits.get(m.id)?.waitingSince.toISOString() ?? null,
      }));
    },
    async addLearner(joiner: string, peerUrl: string) {
      const added = await retryPassingRefusals(() => admin.addLearner(peerUrl, joiner));
      const list = await admin.listMembers();
      return {
        initialCluster: added.initialCluster,
        endpoints: [...new Set(list.flatMap((x) => x.clientUrls))],
      };
    },
    async remove(memberName: string) {
      const found = (await admin.listMembers()).find((x) => x.name === memberName);
      if (!found) {
        throw new ApiError("not_found", `no store member is named "${memberName}"`, {
          name: memberName,
        });
      }
      await retryPassingRefusals(() => admin.remove(found.id));
    },
  };
  return {
    store,
    cluster,
    member,
    stop: async () => {
      await promote.stop();
      admin.close();
      await store.close();
      await member.stop();
    },
  };
}

/** The etcd CA with its key, from the store (to sign a joiner's etcd certificate). */
export async function etcdCa(store: Store): Promise<CertAndKey> {
  const rec = await store.get<CaRecord>(ETCD_CA_KEY);
  if (!rec) throw new ApiError("internal_error", "the store holds no etcd CA");
  return { certPem: rec.value.cert_pem, keyPem: rec.value.key_pem };
}

/**
 * The members view of an external etcd cluster (`store.etcd.endpoints`): its members and
 * their health through etcd's APIs with the configured client certificate. Its membership is
 * the cluster operator's (etcdctl): joins and removals through Otherix are refused.
 *
 * @throws Error when a configured TLS file cannot be read
 */
export async function externalEtcdCluster(
  cfg: ApiConfig,
): Promise<EtcdCluster & { close(): void }> {
  const e = cfg.store.etcd;
  const external = () =>
    new ApiError(
      "conflict",
      "store.etcd.endpoints names an external etcd cluster: manage its members with etcdctl",
    );
  const admin = e.ca_file && e.cert_file && e.key_file
    ? new EtcdAdmin({
      endpoints: e.endpoints,
      tls: {
        caPem: await Deno.readTextFile(e.ca_file),
        certPem: await Deno.readTextFile(e.cert_file),
        keyPem: await Deno.readTextFile(e.key_file),
      },
    })
    : null;
  return {
    async members(): Promise<StoreMember[]> {
      if (!admin) {
        throw new ApiError(
          "conflict",
          "listing an external etcd cluster's members needs store.etcd.cert_file and key_file",
        );
      }
      return (await admin.clusterStatus()).members.map(storeMemberOf);
    },
    addLearner: () => Promise.reject(external()),
    remove: () => Promise.reject(external()),
    close: () => admin?.close(),
  };
}

/** An etcd member's health as the members view shows it (`learnerSince` unknown). */
function storeMemberOf(m: EtcdMemberHealth): StoreMember {
  return {
    name: m.name,
    id: m.id,
    learner: m.isLearner,
    leader: m.isLeader,
    error: m.error,
    peerUrls: m.peerUrls,
    clientUrls: m.clientUrls,
    learnerSince: null,
  };
}
