/**
 * The node's networks (issue 8 "Networks"): what the agent builds for the networks its VMs
 * use, kept in step with the control plane's desired set (`PUT /v1/networks`,
 * shared/api/network_agent.ts) and with the local VMs' NICs.
 *
 * Wanted networks = the networks of the local VMs' NICs (registered from `vm.json` at startup
 * and from each create), as the desired set describes them (spec, overlay peers); a NIC
 * carries its network's spec too, so a VM's first boot never waits for the desired set, and
 * a desired network no local VM uses is not built. {@link NetManager.converge} makes the node
 * match (idempotent; one network failing does not stop the others, its status says why):
 * - unmanaged bridge: the host bridge must exist (never changed or removed);
 * - managed bridge: the bridge (alias `otherix:<network>`, MTU, up) with the gateway address,
 *   IP forwarding, NAT and FORWARD rules (agent/net/nat.ts), dnsmasq with one static lease
 *   per local NIC (agent/net/dnsmasq.ts);
 * - overlay: bridge `oxb<vni>` + VXLAN device `oxv<vni>` (UDP 4789, unicast) whose flood
 *   entries are exactly the peers (one all-zero-MAC forwarding entry per other node, resolved
 *   to IPv4), and a FORWARD rule.
 * Networks applied before and no longer wanted are torn down (dnsmasq stopped, rules and
 * devices removed). Only what the agent itself created is ever removed: applied networks are
 * recorded in `<state>/net/applied.json`, devices carry the alias.
 *
 * VM NICs: {@link NetManager.plumb} (before every QEMU launch) converges and creates the VM's
 * TAPs (`oxt…`, agent/net/names.ts) as ports of their bridges; {@link NetManager.unplumb}
 * (VM deleted) removes them and converges again. All operations are serialized.
 *
 * A network that fails (a missing host bridge, a tool's error) is tried again every 30 s while
 * it stays wanted; its status (`GET /v1/networks`) says why.
 *
 * Persistence: the desired set in `<state>/net/desired.json`; after an agent restart or a host
 * reboot, {@link NetManager.load} + the VMs' registration + {@link NetManager.converge}
 * rebuild everything (dnsmasq, like QEMU, outlives the agent and is found again).
 *
 * @module
 */
import { join } from "node:path";
import { lookup } from "node:dns/promises";
import type {
  AgentDesiredNetwork,
  AgentNetworkSpec,
  AgentNetworkStatus,
  AgentNic,
} from "../../shared/api/network_agent.ts";
import { MAX_NICS_PER_VM, parseCidr, parseIpv4 } from "../../shared/api/networks.ts";
import { ApiError } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import { errorMessage, removeAll, writeFileAtomic } from "../fsutil.ts";
import { type DhcpHost, dnsmasqPaths, ensureDnsmasq, stopDnsmasq } from "./dnsmasq.ts";
import { hostRunner, type Runner } from "./exec.ts";
import {
  deleteLink,
  ensureAddress,
  ensureBridge,
  ensureTap,
  ensureVxlan,
  type Link,
  listLinks,
  syncFloodPeers,
} from "./links.ts";
import { aliasOf, tapName, vxlanName } from "./names.ts";
import {
  enableForwarding,
  ensureRules,
  managedBridgeRules,
  overlayRules,
  removeRules,
  type Rule,
} from "./nat.ts";

/** Options of {@link NetManager}. */
export interface NetManagerOptions {
  /** The agent's state root (`<state>/net/…`). */
  stateDir: string;
  /** The agent's run root (`<run>/net/<network>/dnsmasq.pid`). */
  runDir: string;
  log: Logger;
  /** Runs the networking tools (default: on the host; tests: in a network namespace). */
  run?: Runner;
  /** A peer host name → IPv4 (default: the system resolver); null when it does not resolve. */
  resolve?: (host: string) => Promise<string | null>;
  /** How long after a failed network the node converges again, ms (default 30 000). */
  retryMs?: number;
}

/** Default delay before a failed network is tried again, ms. */
export const RETRY_MS = 30_000;

/** What the agent applied for one network (persisted: what teardown must undo). */
interface Applied {
  spec: AgentNetworkSpec;
  rules: Rule[];
}

interface LocalVm {
  name: string;
  nics: AgentNic[];
}

/** The system resolver, IPv4 only. */
async function systemResolve(host: string): Promise<string | null> {
  try {
    return (await lookup(host, { family: 4 })).address;
  } catch {
    return null;
  }
}

/** The fields that decide a network's devices: a change means teardown, then build. */
function devicesKey(s: AgentNetworkSpec): string {
  return JSON.stringify([s.type, s.managed, s.bridge_name, s.subnet, s.gateway, s.vni]);
}

/** The node's networks and VM NICs. */
export class NetManager {
  #o: NetManagerOptions;
  #run: Runner;
  #desired: AgentDesiredNetwork[] = [];
  #vms = new Map<string, LocalVm>();
  #applied = new Map<string, Applied>();
  #status = new Map<string, AgentNetworkStatus>();
  #tail: Promise<unknown> = Promise.resolve();
  #retry: ReturnType<typeof setTimeout> | null = null;
  #closed = false;

  constructor(opts: NetManagerOptions) {
    this.#o = opts;
    this.#run = opts.run ?? hostRunner;
  }

  get #dir(): string {
    return join(this.#o.stateDir, "net");
  }

  /** Runs `fn` after every earlier operation (one at a time). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#tail.catch(() => {}).then(fn);
    this.#tail = p;
    return p;
  }

  /** Loads the persisted desired set and applied networks (missing files: none). */
  async load(): Promise<void> {
    const read = async <T>(name: string): Promise<T | null> => {
      try {
        return JSON.parse(await Deno.readTextFile(join(this.#dir, name))) as T;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) {
          this.#o.log.warn("net: cannot read state; ignoring it", {
            file: name,
            err: errorMessage(e),
          });
        }
        return null;
      }
    };
    this.#desired = (await read<{ networks: AgentDesiredNetwork[] }>("desired.json"))?.networks ??
      [];
    const applied = await read<{ networks: Record<string, Applied> }>("applied.json");
    this.#applied = new Map(Object.entries(applied?.networks ?? {}));
  }

  async #save(name: string, value: unknown): Promise<void> {
    await Deno.mkdir(this.#dir, { recursive: true, mode: 0o750 });
    await writeFileAtomic(join(this.#dir, name), JSON.stringify(value, null, 2) + "\n", 0o640);
  }

  /** Records that local VM `vmId` (named `name`) has `nics` (at startup and at its create). */
  register(vmId: string, name: string, nics: AgentNic[]): void {
    if (nics.length) this.#vms.set(vmId, { name, nics });
    else this.#vms.delete(vmId);
  }

  /**
   * Replaces the desired set (persisted) and converges.
   *
   * @returns true when the set changed
   */
  setDesired(networks: AgentDesiredNetwork[]): Promise<boolean> {
    return this.#serial(async () => {
      const changed = JSON.stringify(networks) !== JSON.stringify(this.#desired);
      if (changed) {
        this.#desired = networks;
        await this.#save("desired.json", { networks });
      }
      await this.#converge();
      return changed;
    });
  }

  /** Converges the node to the wanted networks (module doc); a failing one sets its status. */
  converge(): Promise<void> {
    return this.#serial(() => this.#converge());
  }

  /**
   * Prepares VM `vmId`'s NICs for a QEMU launch: converges (building the NICs' networks) and
   * creates each NIC's TAP as a port of its network's bridge.
   *
   * @returns the TAP names, NIC order
   * @throws ApiError `network_setup_failed` when a NIC's network or TAP cannot be set up
   */
  plumb(vmId: string, name: string, nics: AgentNic[]): Promise<string[]> {
    return this.#serial(async () => {
      this.register(vmId, name, nics);
      await this.#converge();
      for (const nic of nics) {
        const st = this.#status.get(nic.network.name);
        if (st?.state !== "ready") {
          throw new ApiError(
            "network_setup_failed",
            `network ${nic.network.name}: ${st?.message ?? "not set up"}`,
          );
        }
      }
      const links = await listLinks(this.#run);
      const taps: string[] = [];
      for (const nic of [...nics].sort((a, b) => a.index - b.index)) {
        const tap = tapName(vmId, nic.index);
        await ensureTap(this.#run, links, tap, nic.network.bridge_name, nic.network.mtu);
        taps.push(tap);
      }
      return taps;
    });
  }

  /** Removes VM `vmId`'s TAPs (every NIC index) and forgets its NICs; then converges. */
  unplumb(vmId: string): Promise<void> {
    return this.#serial(async () => {
      await this.#removeTaps(vmId);
      this.#vms.delete(vmId);
      await this.#converge();
    });
  }

  /** Removes the TAPs of a VM the agent forgets without converging (startup clean-up). */
  removeTaps(vmId: string): Promise<void> {
    return this.#serial(() => this.#removeTaps(vmId));
  }

  async #removeTaps(vmId: string): Promise<void> {
    const links = await listLinks(this.#run);
    for (let i = 0; i < MAX_NICS_PER_VM; i++) {
      const tap = tapName(vmId, i);
      if (links.get(tap)?.kind === "tun") await deleteLink(this.#run, tap);
    }
  }

  /** True when nothing is desired, applied or attached (no converge needed). */
  get idle(): boolean {
    return this.#desired.length === 0 && this.#applied.size === 0 && this.#vms.size === 0;
  }

  /** True when local VM `vmId` has registered NICs. */
  hasVm(vmId: string): boolean {
    return this.#vms.has(vmId);
  }

  /** What is applied, network by network (`GET /v1/networks`). */
  list(): AgentNetworkStatus[] {
    return [...this.#status.values()].map((s) => ({
      ...s,
      vm_ids: [...this.#vms].filter(([, v]) => v.nics.some((n) => n.network.name === s.name))
        .map(([id]) => id).sort(),
    })).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * The wanted networks: those of the local VMs' NICs, each as the desired set has it (spec
   * and overlay peers), else as the NIC carries it (no peers yet).
   */
  #wanted(): Map<string, AgentDesiredNetwork> {
    const desired = new Map(this.#desired.map((d) => [d.spec.name, d]));
    const wanted = new Map<string, AgentDesiredNetwork>();
    for (const vm of this.#vms.values()) {
      for (const nic of vm.nics) {
        const name = nic.network.name;
        if (!wanted.has(name)) {
          wanted.set(name, desired.get(name) ?? { spec: nic.network, peers: [] });
        }
      }
    }
    return wanted;
  }

  async #converge(): Promise<void> {
    const wanted = this.#wanted();
    let links = await listLinks(this.#run);
    let dirty = false;
    for (const [name, old] of [...this.#applied]) {
      const w = wanted.get(name);
      if (w && devicesKey(w.spec) === devicesKey(old.spec)) continue;
      try {
        await this.#teardown(old, links);
        this.#applied.delete(name);
        this.#status.delete(name);
        dirty = true;
        this.#o.log.info("net: network removed from this node", { network: name });
      } catch (e) {
        this.#o.log.warn("net: cannot remove network", { network: name, err: errorMessage(e) });
      }
    }
    if (dirty) links = await listLinks(this.#run);
    for (const [name, w] of wanted) {
      const before = this.#status.get(name);
      try {
        const applied = await this.#ensure(w, links);
        if (JSON.stringify(this.#applied.get(name)) !== JSON.stringify(applied.record)) {
          this.#applied.set(name, applied.record);
          dirty = true;
        }
        this.#status.set(name, {
          name,
          bridge_name: w.spec.bridge_name,
          state: "ready",
          message: applied.message,
          peers: applied.peers,
          vm_ids: [],
        });
        if (before?.state !== "ready") {
          this.#o.log.info("net: network ready", {
            network: name,
            type: w.spec.type,
            bridge: w.spec.bridge_name,
            peers: applied.peers,
          });
        }
      } catch (e) {
        const message = errorMessage(e);
        this.#status.set(name, {
          name,
          bridge_name: w.spec.bridge_name,
          state: "failed",
          message,
          peers: [],
          vm_ids: [],
        });
        if (before?.message !== message) {
          this.#o.log.warn("net: cannot set up network", { network: name, err: message });
        }
      }
    }
    for (const name of [...this.#status.keys()]) {
      if (!wanted.has(name) && !this.#applied.has(name)) this.#status.delete(name);
    }
    if (dirty) {
      await this.#save("applied.json", { networks: Object.fromEntries(this.#applied) });
    }
    this.#scheduleRetry();
  }

  /** While a network has failed, converges again every {@link RETRY_MS} (level-triggered). */
  #scheduleRetry(): void {
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#retry = null;
    if (this.#closed || ![...this.#status.values()].some((st) => st.state === "failed")) return;
    const timer = setTimeout(() => {
      this.#retry = null;
      this.converge().catch((e) => this.#o.log.warn("net: retry failed", { err: errorMessage(e) }));
    }, this.#o.retryMs ?? RETRY_MS);
    Deno.unrefTimer(timer);
    this.#retry = timer;
  }

  /** Stops the retry timer (agent shutdown); devices and dnsmasq stay as they are. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#retry = null;
    await this.#tail.catch(() => {});
  }

  /** Static leases of the local NICs on network `name`. */
  #dhcpHosts(name: string): DhcpHost[] {
    const hosts: DhcpHost[] = [];
    for (const vm of this.#vms.values()) {
      for (const nic of vm.nics) {
        if (nic.network.name === name && nic.address) {
          hosts.push({ mac: nic.mac, ip: nic.address, name: vm.name });
        }
      }
    }
    return hosts;
  }

  async #ensure(
    w: AgentDesiredNetwork,
    links: Map<string, Link>,
  ): Promise<{ record: Applied; peers: string[]; message: string | null }> {
    const s = w.spec;
    const run = this.#run;
    const alias = aliasOf(s.name);
    if (s.type === "bridge" && !s.managed) {
      const l = links.get(s.bridge_name);
      if (!l || l.kind !== "bridge") {
        throw new ApiError(
          "network_setup_failed",
          `bridge ${s.bridge_name} ${l ? "is not a bridge" : "does not exist"} on this node ` +
            "(an unmanaged network joins an existing host bridge)",
        );
      }
      return { record: { spec: s, rules: [] }, peers: [], message: null };
    }
    if (s.type === "bridge") {
      const subnet = parseCidr(s.subnet!);
      if (typeof subnet === "string") throw new ApiError("validation_failed", subnet);
      const rules = managedBridgeRules(s.name, s.bridge_name, s.subnet!);
      await ensureBridge(run, links, s.bridge_name, alias, s.mtu);
      await ensureAddress(run, s.bridge_name, `${s.gateway}/${subnet.prefix}`);
      await enableForwarding(run);
      await ensureRules(run, rules);
      const how = await ensureDnsmasq(run, {
        network: s.name,
        bridge: s.bridge_name,
        subnet,
        gateway: s.gateway!,
        hosts: this.#dhcpHosts(s.name),
      }, dnsmasqPaths(this.#o.stateDir, this.#o.runDir, s.name));
      if (how !== "unchanged") this.#o.log.info(`net: dnsmasq ${how}`, { network: s.name });
      return { record: { spec: s, rules }, peers: [], message: null };
    }
    // overlay
    const rules = overlayRules(s.name, s.bridge_name);
    await ensureBridge(run, links, s.bridge_name, alias, s.mtu);
    await ensureVxlan(run, links, vxlanName(s.vni!), alias, s.vni!, s.bridge_name, s.mtu!);
    const peers: string[] = [];
    const unresolved: string[] = [];
    for (const host of w.peers) {
      const ip = parseIpv4(host) !== null ? host : await (this.#o.resolve ?? systemResolve)(host);
      if (ip) peers.push(ip);
      else unresolved.push(host);
    }
    const distinct = [...new Set(peers)].sort();
    await syncFloodPeers(run, vxlanName(s.vni!), distinct);
    await ensureRules(run, rules);
    return {
      record: { spec: s, rules },
      peers: distinct,
      message: unresolved.length ? `peers not resolved: ${unresolved.join(", ")}` : null,
    };
  }

  async #teardown(a: Applied, links: Map<string, Link>): Promise<void> {
    const s = a.spec;
    const alias = aliasOf(s.name);
    if (s.type === "bridge" && !s.managed) return;
    if (s.type === "bridge") {
      const p = dnsmasqPaths(this.#o.stateDir, this.#o.runDir, s.name);
      await stopDnsmasq(this.#run, p, s.name);
      await removeAll(p.dir);
      await removeAll(join(p.pidFile, ".."));
    } else if (links.get(vxlanName(s.vni!))?.alias === alias) {
      await deleteLink(this.#run, vxlanName(s.vni!));
    }
    await removeRules(this.#run, a.rules);
    if (links.get(s.bridge_name)?.alias === alias) await deleteLink(this.#run, s.bridge_name);
  }
}
