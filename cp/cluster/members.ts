/**
 * `GET /v1/cluster/members` (spec 000 "Cluster membership": "the first thing to check on any
 * HA / quorum issue"): the store's members joined with the replica registry and the
 * controller leader.
 *
 * On the embedded store there is one member, this replica (a voter, the leader; healthy while
 * the store answers). On etcd the members come from an {@link EtcdCluster} (etcd's member
 * list and per-member status), each matched to the live replica of the same name.
 *
 * @module
 */
import type { ClusterMember, ClusterMembers, Replica } from "../../shared/api/cluster.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { liveReplicas } from "./replicas.ts";

/** One etcd member as the membership source reports it. */
export interface StoreMember {
  name: string;
  /** etcd member id, hex. */
  id: string;
  learner: boolean;
  leader: boolean;
  /** null when the member answered its status request. */
  error: string | null;
  peerUrls: string[];
  clientUrls: string[];
  /** For a learner: since when it waits for promotion (ISO 8601), when known. */
  learnerSince: string | null;
}

/**
 * The etcd cluster behind an etcd-backed store, as the control plane manages it
 * (cp/cluster/etcd_admin.ts implements it on etcd's Cluster and Maintenance APIs).
 */
export interface EtcdCluster {
  /** Every member with its status. @throws ApiError `store_unavailable` when none answers */
  members(): Promise<StoreMember[]>;
  /**
   * Adds member `name` as a learner listening for peers at `peerUrl`.
   *
   * @returns etcd `--initial-cluster` for the new member (itself included) and the client
   *   URLs of the members
   * Waits out etcd's passing refusals (cp/cluster/etcd_admin.ts `retryPassingRefusals`).
   *
   * @throws ApiError `conflict` when a member has that name or peer URL
   */
  addLearner(
    name: string,
    peerUrl: string,
  ): Promise<{ initialCluster: string; endpoints: string[] }>;
  /**
   * Removes member `name`, waiting out etcd's passing refusals.
   *
   * @throws ApiError `not_found`; `conflict` for the last voter
   */
  remove(name: string): Promise<void>;
}

/** Joins one store member with its replica record. */
function memberView(m: StoreMember, replica: Replica | undefined): ClusterMember {
  return {
    name: m.name,
    id: m.id,
    role: m.learner ? "learner" : "voter",
    is_leader: m.leader,
    healthy: m.error === null,
    error: m.error,
    peer_urls: m.peerUrls,
    client_urls: m.clientUrls,
    api_url: replica?.api_url ?? null,
    agent_url: replica?.agent_url ?? null,
    learner_since: m.learner ? m.learnerSince : null,
  };
}

/**
 * The cluster's members (see the module doc).
 *
 * @throws ApiError `store_unavailable` (from the membership source or the store)
 */
export async function clusterMembers(
  ctx: CpContext,
  etcd: EtcdCluster | null,
): Promise<ClusterMembers> {
  const replicas = new Map(liveReplicas(ctx.cache?.replicas).map((r) => [r.name, r]));
  const controllerLeader = ctx.election?.leader()?.identity ?? null;
  if (etcd) {
    const members = await etcd.members();
    return {
      backend: "etcd",
      controller_leader: controllerLeader,
      members: members.map((m) => memberView(m, replicas.get(m.name)))
        .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    };
  }
  const name = ctx.pki.replicaName;
  let error: string | null = null;
  try {
    await ctx.store.ping();
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  }
  const self: StoreMember = {
    name,
    id: "",
    learner: false,
    leader: true,
    error,
    peerUrls: [],
    clientUrls: [],
    learnerSince: null,
  };
  return {
    backend: "embedded",
    controller_leader: controllerLeader ?? (ctx.election ? null : name),
    members: [{ ...memberView(self, replicas.get(name)), id: null }],
  };
}

/**
 * Removes store member `name` (`otherix cluster remove-member`). A live replica of that name
 * loses its store: stop it first.
 *
 * @throws ApiError `conflict` on the embedded store (its one member cannot go); what
 *   {@link EtcdCluster.remove} raises
 */
export async function removeMember(ctx: CpContext, name: string): Promise<void> {
  if (!ctx.etcd) {
    throw new ApiError(
      "conflict",
      "this control plane runs on the embedded store: its one member cannot be removed",
    );
  }
  await ctx.etcd.remove(name);
  ctx.log.info("cluster: member removed", { member: name });
}
