/**
 * The network controller: keeps every node's agent in step with the networks its VMs use
 * (level-triggered, keyed by node name). A reconcile computes the node's desired set
 * (cp/networks/desired.ts) from the informer caches and sends it with `PUT /v1/networks` when
 * it differs from what the agent last acknowledged (or that acknowledgement is older than
 * `repushMs`, which repairs drift such as a wiped agent state). Only `ready` nodes with an
 * endpoint are called; a node that comes back is reconciled by its node event.
 *
 * Triggers: a VM added, deleted or moved, or whose NICs changed (its node, and the nodes
 * sharing one of its overlays: their peers change); a network changed (the nodes hosting its
 * VMs); a node added, deleted, or whose endpoint or status changed (itself and the nodes
 * sharing an overlay with it); the periodic resync.
 *
 * Nodes whose VMs use no network are not called at all (agents remove networks their VMs no
 * longer use by themselves); an empty set is sent only to replace a non-empty one. An agent
 * answering 404 to it (one that predates networks) counts as in step; any failure to send a
 * non-empty set is retried with backoff.
 *
 * @module
 */
import type { AgentNetworksRequest } from "../../shared/api/network_agent.ts";
import { AgentError } from "../agent_client.ts";
import { type Caches, type CpContext, leading } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { Informer } from "../controllers/informer.ts";
import { keys, type NetworkRecord, type NodeRecord, type VmRecord } from "../repo/records.ts";
import { createNetAgentClient, type NetAgentClient } from "./agent_client.ts";
import {
  type DesiredInputs,
  desiredNetworksFor,
  networksOf,
  nodesAffectedByNode,
  nodesAffectedByVm,
} from "./desired.ts";

/** The name of the VM informer index by network (cp/app.ts `startCaches` files it). */
export const VMS_BY_NETWORK_INDEX = "network";

/** The index function of {@link VMS_BY_NETWORK_INDEX}. */
export function vmNetworksIndex(vm: VmRecord): string[] {
  return networksOf(vm);
}

/** Options of {@link startNetworkController}. */
export interface NetworkControllerOptions {
  /** Re-send a node's unchanged non-empty set after this long, ms (default 300 000). */
  repushMs?: number;
  /** Resync period, ms (default 30 000). */
  resyncMs?: number;
  /** The agent client (default: mTLS with this replica's certificate). */
  client?: NetAgentClient;
}

/** A running network controller. */
export interface NetworkController {
  controller: Controller;
  /** The networks informer (`/networks/`). */
  networks: Informer<NetworkRecord>;
  /** What each node last acknowledged (JSON of its desired set), for tests and logs. */
  acknowledged(node: string): AgentNetworksRequest | null;
  stop(): Promise<void>;
}

/**
 * Starts the network controller on the shared caches (`caches.vms` must carry the
 * {@link VMS_BY_NETWORK_INDEX} index): starts its networks informer (resolves once it holds
 * the initial list), then looks at every node once; the caches may already run.
 */
export async function startNetworkController(
  ctx: CpContext,
  caches: Caches,
  opts: NetworkControllerOptions = {},
): Promise<NetworkController> {
  const networks = new Informer<NetworkRecord>({
    store: ctx.store,
    prefix: keys.networks,
    onError: (e) => ctx.log.warn("informer error", { err: e }),
  });
  const client = opts.client ?? createNetAgentClient(ctx);
  const repushMs = opts.repushMs ?? 300_000;
  const acked = new Map<string, { json: string; at: number }>();
  const vmsOf = (keysList: string[]) =>
    keysList.map((k) => caches.vms.get(k)).filter((v): v is VmRecord => !!v);
  const inputs: DesiredInputs = {
    vmsOnNode: (node) => vmsOf(caches.vms.byIndex("node", node)),
    vmsOnNetwork: (name) => vmsOf(caches.vms.byIndex(VMS_BY_NETWORK_INDEX, name)),
    network: (name) => networks.get(keys.network(name)),
    node: (name) => caches.nodes.get(keys.node(name)),
  };

  const reconcile = async (node: string) => {
    const rec = caches.nodes.get(keys.node(node));
    if (!rec) {
      acked.delete(node);
      return;
    }
    if (rec.status !== "ready" || !rec.endpoint) return;
    const desired = desiredNetworksFor(node, inputs);
    const json = JSON.stringify(desired);
    const last = acked.get(node);
    const now = ctx.now().getTime();
    const empty = desired.networks.length === 0;
    // An empty set is sent only to replace a non-empty one: agents remove networks their VMs
    // no longer use by themselves, so nodes without networks are never called.
    if (empty && (!last || last.json === json)) {
      acked.set(node, { json, at: now });
      return;
    }
    if (last?.json === json && now - last.at < repushMs) return;
    try {
      await client.putNetworks({ name: node, endpoint: rec.endpoint }, desired);
    } catch (e) {
      if (empty && e instanceof AgentError && e.kind === "api" && e.status === 404) {
        acked.set(node, { json, at: now });
        return;
      }
      throw e;
    }
    acked.set(node, { json, at: now });
    ctx.log.info("network: node desired set sent", {
      node,
      networks: desired.networks.map((n) =>
        n.spec.type === "overlay" ? `${n.spec.name} (peers ${n.peers.join(",") || "none"})` : n
          .spec.name
      ),
    });
  };

  const controller = new Controller({
    name: "network",
    active: () => leading(ctx),
    log: ctx.log,
    reconcile,
    resyncMs: opts.resyncMs ?? 30_000,
    maxDelayMs: 10_000,
  });
  const enqueueAll = (nodes: string[]) => nodes.forEach((n) => controller.enqueue(n));

  caches.vms.addHandlers({
    onAdd: (_k, vm) => enqueueAll(nodesAffectedByVm(vm, inputs)),
    onDelete: (_k, vm) => enqueueAll(nodesAffectedByVm(vm, inputs)),
    onUpdate: (_k, old, vm) => {
      if (
        old.node === vm.node && JSON.stringify(old.nics ?? []) === JSON.stringify(vm.nics ?? [])
      ) {
        return;
      }
      enqueueAll([...nodesAffectedByVm(old, inputs), ...nodesAffectedByVm(vm, inputs)]);
    },
  });
  const onNetwork = (_k: string, net: NetworkRecord) =>
    enqueueAll(inputs.vmsOnNetwork(net.name).map((v) => v.node));
  networks.addHandlers({
    onAdd: onNetwork,
    onUpdate: (k, _o, n) => onNetwork(k, n),
    onDelete: onNetwork,
  });
  const nodeName = (k: string) => k.slice(keys.nodes.length);
  caches.nodes.addHandlers({
    onAdd: (k) => controller.enqueue(nodeName(k)),
    onDelete: (k) => enqueueAll(nodesAffectedByNode(nodeName(k), inputs)),
    onUpdate: (k, old: NodeRecord, cur: NodeRecord) => {
      if (old.endpoint === cur.endpoint && old.status === cur.status) return;
      enqueueAll(nodesAffectedByNode(nodeName(k), inputs));
    },
  });
  await networks.start();
  controller.start(() => caches.nodes.keys().map(nodeName));
  // Started after the caches: the initial adds were missed, so every node is looked at now.
  enqueueAll(caches.nodes.keys().map(nodeName));
  return {
    controller,
    networks,
    acknowledged: (node) => {
      const a = acked.get(node);
      return a ? JSON.parse(a.json) : null;
    },
    stop: async () => {
      await controller.stop();
      networks.stop();
    },
  };
}
