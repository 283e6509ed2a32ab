/**
 * Membership operations on a running etcd cluster over mutual TLS (issue 11: `otherix-api
 * join` adds a learner, the promote loop promotes it, `GET /v1/cluster/members` shows voters,
 * learners, their health and the leader, `otherix cluster remove-member` removes one).
 *
 * The client is the store backend's ({@link EtcdClient} of cp/store/etcd_client.ts: etcd's
 * JSON gRPC gateway over Deno's `fetch` with the client certificate): `cluster/member/list|
 * add|promote|remove` and `maintenance/status`. (`npm:etcd3`'s grpc-js cannot use an IP
 * endpoint over TLS under Deno without a server-name override, and would need `GRPC_*`
 * variables and its proto files in the API's permission sandbox.)
 *
 * Member ids are etcd's uint64 ids as 16-digit lowercase hex, as etcdctl and etcd's own logs
 * print them (`8e9e05c52164694d`).
 *
 * Errors (stable codes of shared/errors.ts): `validation_failed` (a bad id, name or URL),
 * `not_found` (no such member), `conflict` (etcd refuses the change: too many learners, a
 * peer URL already in the cluster, a change that would lose quorum, promoting a voter),
 * `store_unavailable` (no member answered in time). A refusal changes nothing; after
 * `store_unavailable` from a change the outcome is unknown (list the members to learn it).
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";
import { EtcdClient, EtcdRpcError } from "../store/etcd_client.ts";
import { parseMemberUrl } from "./etcd_member.ts";

/** Client TLS material, PEM (the replica's certificate, clientAuth, from the CA etcd trusts). */
export interface EtcdTlsPem {
  caPem: string;
  certPem: string;
  keyPem: string;
}

/** Options of {@link EtcdAdmin}. */
export interface EtcdAdminOptions {
  /** Client URLs of one or more members (`https://host:port`), tried in turn. */
  endpoints: string[];
  tls: EtcdTlsPem;
  /** Deadline of one call, ms (default 5 000). */
  timeoutMs?: number;
}

/** A cluster member as etcd lists it. */
export interface EtcdMemberInfo {
  /** 16-digit lowercase hex. */
  id: string;
  /** The member's `--name`; empty until an added member has started. */
  name: string;
  peerUrls: string[];
  /** Empty until an added member has started. */
  clientUrls: string[];
  isLearner: boolean;
}

/** One member's answer to maintenance Status. */
export interface EtcdEndpointStatus {
  /** The client URL that answered. */
  endpoint: string;
  /** The answering member's id (hex). */
  memberId: string;
  /** etcd server version, e.g. `3.4.23`. */
  version: string;
  /** The leader this member sees (hex), null when it sees none. */
  leaderId: string | null;
  raftTerm: number;
  raftIndex: number;
  raftAppliedIndex: number;
  /** Backend database size on disk, bytes. */
  dbSizeBytes: number;
  /** Of which in use, bytes. */
  dbSizeInUseBytes: number;
  isLearner: boolean;
  /** Errors the member reports (alarms such as `NOSPACE`); empty when fine. */
  errors: string[];
}

/** A member with its health (see {@link EtcdAdmin.clusterStatus}). */
export interface EtcdMemberHealth extends EtcdMemberInfo {
  /** Answered Status, sees a leader, reports no errors. */
  healthy: boolean;
  isLeader: boolean;
  /** Its Status answer; null when it did not answer (or has not started). */
  status: EtcdEndpointStatus | null;
  /** Why it is not healthy, null when it is. */
  error: string | null;
}

/** The members with health and the leader. */
export interface EtcdClusterStatus {
  members: EtcdMemberHealth[];
  /** The leader's id (hex) as most members see it, null when none is known. */
  leaderId: string | null;
}

/** The outcome of {@link EtcdAdmin.addLearner}: what the joiner needs to start its member. */
export interface AddedLearner {
  member: EtcdMemberInfo;
  /**
   * `--initial-cluster` for the joiner: every member's `name=peerUrl` (sorted by name), the
   * joiner's included.
   */
  initialCluster: string;
  initialClusterState: "existing";
}

/** The outcome of {@link EtcdAdmin.promote}. */
export type PromoteResult =
  | { promoted: true }
  /** etcd refused for now (the learner has not caught up, or quorum is at risk). */
  | { promoted: false; reason: string };

/** etcd's uint64 id (decimal, as gRPC-JSON carries it) → 16-digit hex. */
export function hexId(id: string | number | bigint): string {
  return BigInt(id).toString(16).padStart(16, "0");
}

/**
 * Hex member id (as shown) → decimal for etcd.
 *
 * @throws ApiError `validation_failed` when `id` is not 1–16 hex digits
 */
export function decimalId(id: string): string {
  if (!/^[0-9a-f]{1,16}$/i.test(id)) {
    throw new ApiError(
      "validation_failed",
      `member id ${JSON.stringify(id)} is not an etcd member id (16 hex digits)`,
      { id },
    );
  }
  return BigInt(`0x${id}`).toString();
}

/** A member as the gateway carries it (proto field names; false and empty fields omitted). */
interface WireMember {
  ID: string;
  name?: string;
  peerURLs?: string[];
  clientURLs?: string[];
  isLearner?: boolean;
}

/** maintenance Status as the gateway carries it (int64 as decimal strings). */
interface WireStatus {
  header: { member_id: string };
  version: string;
  dbSize?: string;
  dbSizeInUse?: string;
  leader?: string;
  raftIndex?: string;
  raftTerm?: string;
  raftAppliedIndex?: string;
  errors?: string[];
  isLearner?: boolean;
}

function memberInfo(m: WireMember): EtcdMemberInfo {
  return {
    id: hexId(m.ID),
    name: m.name ?? "",
    peerUrls: [...(m.peerURLs ?? [])],
    clientUrls: [...(m.clientURLs ?? [])],
    isLearner: Boolean(m.isLearner),
  };
}

function statusOf(endpoint: string, s: WireStatus): EtcdEndpointStatus {
  const leader = String(s.leader ?? "0");
  return {
    endpoint,
    memberId: hexId(s.header.member_id),
    version: s.version,
    leaderId: leader === "0" ? null : hexId(leader),
    raftTerm: Number(s.raftTerm ?? 0),
    raftIndex: Number(s.raftIndex ?? 0),
    raftAppliedIndex: Number(s.raftAppliedIndex ?? 0),
    dbSizeBytes: Number(s.dbSize ?? 0),
    dbSizeInUseBytes: Number(s.dbSizeInUse ?? 0),
    isLearner: Boolean(s.isLearner),
    errors: [...(s.errors ?? [])],
  };
}

/** etcd's refusal messages (etcdserver/api/v3rpc/rpctypes) → what we say. */
const REFUSALS: { re: RegExp; code: "not_found" | "conflict"; say: string; retry?: true }[] = [
  { re: /member not found/, code: "not_found", say: "no such etcd member" },
  {
    re: /too many learner members/,
    code: "conflict",
    say: "the cluster already has a learner",
    retry: true,
  },
  { re: /Peer URLs already exists/i, code: "conflict", say: "the peer URL is already a member's" },
  {
    re: /not enough started members/,
    code: "conflict",
    say: "etcd refuses: the change would leave the cluster without quorum",
  },
  {
    re: /unhealthy cluster/,
    code: "conflict",
    say: "etcd refuses until the members needed for quorum have been connected for 5 s " +
      "(etcd's health interval); try again shortly",
    retry: true,
  },
  { re: /given member URLs are invalid/, code: "conflict", say: "etcd refuses the URLs" },
  {
    re: /can only promote a learner member$/,
    code: "conflict",
    say: "the member is already a voter",
  },
];

/**
 * Maps a failure of the etcd client to an ApiError (see the module doc). The client turns
 * etcd's "unavailable" answers into `store_unavailable`; some of those are refusals
 * ("unhealthy cluster"), recognized by etcd's words.
 */
function mapError(e: unknown, what: string): ApiError {
  const msg = (e as Error)?.message ?? String(e);
  const line = msg.split("\n")[0];
  for (const r of REFUSALS) {
    if (r.re.test(line)) {
      // `retryable`: a refusal that passes on its own (a learner promoted, members settled).
      return new ApiError(
        r.code,
        `${what}: ${r.say} (${line})`,
        r.retry ? { retryable: true } : {},
      );
    }
  }
  if (e instanceof ApiError) return e;
  if (e instanceof EtcdRpcError) {
    return new ApiError("internal_error", `${what}: etcd refused: ${msg}`, { grpc_code: e.code });
  }
  return new ApiError("store_unavailable", `${what}: etcd did not answer: ${msg}`);
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** How long membership changes wait out etcd's passing refusals, ms. */
export const PASSING_REFUSAL_WAIT_MS = 30_000;

/**
 * Runs `fn`, again every 500 ms for up to `waitMs`, while it fails with a refusal etcd lifts
 * on its own (`details.retryable`: the previous learner not promoted yet; members connected
 * less than 5 s ago). Other errors, and the last refusal, are thrown.
 */
export async function retryPassingRefusals<T>(
  fn: () => Promise<T>,
  waitMs = PASSING_REFUSAL_WAIT_MS,
): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      const passing = e instanceof ApiError && e.details?.retryable === true;
      if (!passing || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Membership operations on one etcd cluster (see the module doc). Call `close()` at the end. */
export class EtcdAdmin {
  #o: Required<EtcdAdminOptions>;
  #client: EtcdClient;

  /** @throws ApiError `validation_failed` when an endpoint is not `https://host:port` */
  constructor(opts: EtcdAdminOptions) {
    if (!opts.endpoints.length) {
      throw new ApiError("validation_failed", "etcd admin: no endpoints");
    }
    for (const e of opts.endpoints) parseMemberUrl(e, "etcd endpoint");
    this.#o = { timeoutMs: 5_000, ...opts };
    this.#client = this.#connect(opts.endpoints);
  }

  #connect(endpoints: string[]): EtcdClient {
    const t = this.#o.timeoutMs;
    return new EtcdClient({ endpoints, tls: this.#o.tls, dialTimeoutMs: t, requestTimeoutMs: t });
  }

  /**
   * Every member, sorted by name then id.
   *
   * @throws ApiError `store_unavailable`
   */
  async listMembers(): Promise<EtcdMemberInfo[]> {
    try {
      const res = await this.#client.call<{ members?: WireMember[] }>(
        "cluster/member/list",
        {},
        { idempotent: true },
      );
      return (res.members ?? []).map(memberInfo).sort((a, b) =>
        a.name.localeCompare(b.name) || a.id.localeCompare(b.id)
      );
    } catch (e) {
      throw mapError(e, "list etcd members");
    }
  }

  /**
   * Maintenance Status of the member at `endpoint` (a client URL), asked of it alone.
   *
   * @throws ApiError `validation_failed` (not `https://host:port`), `store_unavailable` when
   *   it does not answer within the timeout
   */
  async endpointStatus(endpoint: string): Promise<EtcdEndpointStatus> {
    parseMemberUrl(endpoint, "etcd endpoint");
    const client = this.#connect([endpoint]);
    try {
      const res = await client.call<WireStatus>("maintenance/status", {}, { idempotent: true });
      return statusOf(endpoint, res);
    } catch (e) {
      throw mapError(e, `status of ${endpoint}`);
    } finally {
      client.close();
    }
  }

  /**
   * Every member with its health (Status asked of each member's client URLs, in parallel)
   * and the leader. A member that has not started yet (added, no client URL) is unhealthy
   * with error `not started`.
   *
   * @throws ApiError `store_unavailable` when the member list cannot be read
   */
  async clusterStatus(): Promise<EtcdClusterStatus> {
    const members = await this.listMembers();
    const statuses = await Promise.all(members.map(async (m) => {
      if (!m.clientUrls.length) return { status: null, error: "not started" };
      let error = "";
      for (const url of m.clientUrls) {
        try {
          return { status: await this.endpointStatus(url), error: null };
        } catch (e) {
          error = (e as Error).message;
        }
      }
      return { status: null, error };
    }));
    const votes = new Map<string, number>();
    for (const { status } of statuses) {
      if (status?.leaderId) votes.set(status.leaderId, (votes.get(status.leaderId) ?? 0) + 1);
    }
    const leaderId = [...votes].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
    return {
      leaderId,
      members: members.map((m, i) => {
        const { status, error } = statuses[i];
        const why = error ??
          (status?.errors.length
            ? status.errors.join("; ")
            : status?.leaderId
            ? null
            : "sees no leader");
        return { ...m, status, healthy: why === null, isLeader: m.id === leaderId, error: why };
      }),
    };
  }

  /**
   * Adds a learner (non-voting member) with `peerUrl`, to be started as `name` with
   * `--initial-cluster-state=existing` and the returned `initialCluster`.
   *
   * @throws ApiError `validation_failed` for a bad name or URL; `conflict` when the name or
   *   peer URL is taken, a member added earlier never started (its name is unknown, so no
   *   initial cluster can be given: remove it first), or etcd refuses (3.4 allows one
   *   learner at a time); `store_unavailable`
   */
  async addLearner(peerUrl: string, name: string): Promise<AddedLearner> {
    parseMemberUrl(peerUrl, "peer URL");
    if (!NAME_RE.test(name)) {
      throw new ApiError(
        "validation_failed",
        `member name ${JSON.stringify(name)}: use letters, digits, '.', '_', '-'`,
      );
    }
    const before = await this.listMembers();
    const unstarted = before.find((m) => !m.name);
    if (unstarted) {
      throw new ApiError(
        "conflict",
        `etcd member ${unstarted.id} (${unstarted.peerUrls.join(",")}) was added but never ` +
          "started; remove it first (otherix cluster remove-member)",
        { member_id: unstarted.id },
      );
    }
    if (before.some((m) => m.name === name)) {
      throw new ApiError("conflict", `an etcd member is already named ${JSON.stringify(name)}`, {
        name,
      });
    }
    try {
      // Not idempotent: an unknown outcome is never sent twice (it could add two members).
      const res = await this.#client.call<{ member: WireMember; members?: WireMember[] }>(
        "cluster/member/add",
        { peerURLs: [peerUrl], isLearner: true },
      );
      const added = { ...memberInfo(res.member), name, isLearner: true };
      const all = (res.members ?? []).map(memberInfo)
        .map((m) => (m.id === added.id ? added : m))
        .sort((a, b) => a.name.localeCompare(b.name));
      const initialCluster = all.flatMap((m) => m.peerUrls.map((u) => `${m.name}=${u}`))
        .join(",");
      return { member: added, initialCluster, initialClusterState: "existing" };
    } catch (e) {
      throw mapError(e, `add learner ${peerUrl}`);
    }
  }

  /**
   * Promotes learner `id` (hex) to a voter. etcd refuses a learner that has not caught up
   * with the leader, or a promotion that would put quorum at risk: that is `{promoted:
   * false, reason}`, not an error (the promote loop tries again).
   *
   * @throws ApiError `validation_failed` (bad id), `not_found`, `conflict` (already a voter),
   *   `store_unavailable`
   */
  async promote(id: string): Promise<PromoteResult> {
    const ID = decimalId(id);
    try {
      await this.#client.call("cluster/member/promote", { ID });
      return { promoted: true };
    } catch (e) {
      const msg = (e as Error)?.message ?? String(e);
      if (/in sync with leader/.test(msg)) {
        return { promoted: false, reason: "the learner has not caught up with the leader yet" };
      }
      if (/not enough started members|unhealthy cluster/.test(msg)) {
        return { promoted: false, reason: "promoting it now would put quorum at risk" };
      }
      throw mapError(e, `promote etcd member ${id}`);
    }
  }

  /**
   * Removes member `id` (hex). etcd stops a removed member itself.
   *
   * @throws ApiError `validation_failed`, `not_found`, `conflict` (quorum would be lost, or
   *   etcd's 5 s health interval since a member connected has not passed), `store_unavailable`
   */
  async remove(id: string): Promise<void> {
    const ID = decimalId(id);
    try {
      await this.#client.call("cluster/member/remove", { ID });
    } catch (e) {
      throw mapError(e, `remove etcd member ${id}`);
    }
  }

  /** Closes the connections. */
  close(): void {
    this.#client.close();
  }
}
