/**
 * Addresses of NICs Otherix did not assign (issue 8 "Reachability": a VM on an unmanaged
 * bridge takes its address from the LAN's DHCP): the agent learns them, for each running VM's
 * NICs without an IPAM address, from
 *
 * 1. the QEMU guest agent when the guest runs one (`guest-network-get-interfaces` on the VM's
 *    guest-agent socket, matched by MAC; source `guest_agent`), else
 * 2. the host's neighbour table (`ip -j -4 neigh show`: entries whose link-layer address is
 *    the NIC's MAC and whose state is not FAILED/INCOMPLETE; source `neighbour`). The host
 *    only has such an entry once it exchanged packets with the guest.
 *
 * Addresses are reported on the observed VM (shared/api/vm_runtime.ts `nic_addresses`), IPv4
 * only (the VM view's NIC addresses are IPv4). A pass runs every {@link NIC_ADDRESS_POLL_MS}.
 *
 * @module
 */
import type { LearntNicAddress } from "../shared/api/vm_runtime.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage } from "./fsutil.ts";
import { hostRunner, type Runner } from "./net/exec.ts";

/** How often the addresses are looked up, ms. */
export const NIC_ADDRESS_POLL_MS = 10_000;
/** Most addresses reported per NIC. */
export const MAX_PER_NIC = 8;
/** How long the guest agent gets to answer, ms. */
export const GUEST_AGENT_TIMEOUT_MS = 2_000;

/** One neighbour-table entry with a link-layer address. */
export interface Neighbour {
  address: string;
  mac: string;
  dev: string;
  state: string[];
}

/** States of entries that do not (or no longer) resolve. */
const DEAD_STATES = new Set(["FAILED", "INCOMPLETE"]);

/**
 * The IPv4 neighbours of `ip -j -4 neigh show` output (entries without `lladdr`, and dead
 * ones, left out; MACs lowercased).
 *
 * @throws SyntaxError when `json` is not JSON
 */
export function parseNeighbours(json: string): Neighbour[] {
  const rows = JSON.parse(json.trim() === "" ? "[]" : json) as Record<string, unknown>[];
  const out: Neighbour[] = [];
  for (const r of rows) {
    const address = typeof r.dst === "string" ? r.dst : null;
    const mac = typeof r.lladdr === "string" ? r.lladdr.toLowerCase() : null;
    const state = Array.isArray(r.state) ? r.state.map(String) : [];
    if (!address || !mac || address.includes(":")) continue;
    if (state.some((s) => DEAD_STATES.has(s))) continue;
    out.push({ address, mac, dev: typeof r.dev === "string" ? r.dev : "", state });
  }
  return out;
}

/** The host's neighbour table (`ip -j -4 neigh show`). @throws Error when `ip` fails */
export async function readNeighbours(run: Runner = hostRunner): Promise<Neighbour[]> {
  const r = await run("ip", ["-j", "-4", "neigh", "show"]);
  if (r.code !== 0) throw new Error(`ip neigh show failed (exit ${r.code}): ${r.stderr.trim()}`);
  return parseNeighbours(r.stdout);
}

/** An interface as `guest-network-get-interfaces` returns it. */
interface QgaInterface {
  "hardware-address"?: string;
  "ip-addresses"?: { "ip-address-type"?: string; "ip-address"?: string; prefix?: number }[];
}

/**
 * The IPv4 addresses the guest agent on unix socket `sock` reports, by MAC (lowercase). The
 * QEMU guest agent protocol: `guest-sync` with a random id (answered with the id, which
 * discards any stale reply), then `guest-network-get-interfaces`; one JSON object per line.
 *
 * @throws Error when the socket cannot be reached, the guest does not answer within
 *   `timeoutMs` ms (no agent in the guest), or the answer is malformed
 */
export async function guestAgentAddresses(
  sock: string,
  timeoutMs = GUEST_AGENT_TIMEOUT_MS,
): Promise<Map<string, { address: string; prefix: number | null }[]>> {
  const conn = await Deno.connect({ transport: "unix", path: sock });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    const lines = readLines(conn);
    const send = (cmd: unknown) => conn.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
    const id = Math.floor(Math.random() * 2 ** 31);
    await send({ execute: "guest-sync", arguments: { id } });
    for (;;) {
      const reply = await nextJson(lines);
      if (reply.return === id) break;
    }
    await send({ execute: "guest-network-get-interfaces" });
    const reply = await nextJson(lines);
    if (!Array.isArray(reply.return)) {
      throw new Error(`guest agent: ${JSON.stringify(reply.error ?? reply).slice(0, 200)}`);
    }
    const out = new Map<string, { address: string; prefix: number | null }[]>();
    for (const i of reply.return as QgaInterface[]) {
      const mac = i["hardware-address"]?.toLowerCase();
      if (!mac) continue;
      const v4 = (i["ip-addresses"] ?? []).filter((a) =>
        a["ip-address-type"] === "ipv4" && typeof a["ip-address"] === "string"
      ).map((a) => ({ address: a["ip-address"]!, prefix: a.prefix ?? null }));
      out.set(mac, [...(out.get(mac) ?? []), ...v4]);
    }
    return out;
  } catch (e) {
    if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) {
      throw new Error(`guest agent on ${sock} did not answer within ${timeoutMs} ms`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

async function* readLines(conn: Deno.Conn): AsyncGenerator<string> {
  const dec = new TextDecoder();
  const buf = new Uint8Array(64 * 1024);
  let pending = "";
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("guest agent closed the connection");
    pending += dec.decode(buf.subarray(0, n), { stream: true });
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line !== "") yield line;
    }
    if (pending.length > 1024 * 1024) throw new Error("guest agent: reply too long");
  }
}

async function nextJson(lines: AsyncGenerator<string>): Promise<Record<string, unknown>> {
  const { value, done } = await lines.next();
  if (done) throw new Error("guest agent closed the connection");
  // A 0xFF sync delimiter (decoded as U+FFFD) may precede a reply.
  return JSON.parse(value.replace(/^[\xff\ufffd]+/, "")) as Record<string, unknown>;
}

/** A NIC whose address the watcher looks for. */
export interface WatchedNic {
  mac: string;
  /** True when IPAM assigned its address (then nothing is looked up). */
  ipam: boolean;
}

/** Dependencies of {@link NicAddressWatcher}. */
export interface NicAddressWatcherOptions {
  log: Logger;
  /** Called after VM `id`'s learnt addresses changed. */
  onChange: (id: string) => void;
  /** The neighbour table (default: {@link readNeighbours} on the host). */
  neighbours?: () => Promise<Neighbour[]>;
  /** The guest agent's addresses (default: {@link guestAgentAddresses}). */
  guestAgent?: (sock: string) => Promise<Map<string, { address: string; prefix: number | null }[]>>;
}

interface WatchedVm {
  nics: WatchedNic[];
  /** The VM's guest-agent socket (null: none). */
  qgaSock: string | null;
  learnt: LearntNicAddress[];
}

/** Learns the addresses of the running VMs' non-IPAM NICs (see the module doc). */
export class NicAddressWatcher {
  #vms = new Map<string, WatchedVm>();
  #o: NicAddressWatcherOptions;
  #polling: Promise<void> | null = null;

  constructor(opts: NicAddressWatcherOptions) {
    this.#o = opts;
  }

  /** Watches VM `id`'s NICs while it runs (replacing what was watched). */
  watch(id: string, nics: WatchedNic[], qgaSock: string | null): void {
    const prev = this.#vms.get(id);
    this.#vms.set(id, {
      nics: nics.map((n) => ({ ...n, mac: n.mac.toLowerCase() })),
      qgaSock,
      learnt: prev?.learnt ?? [],
    });
  }

  /** Stops watching VM `id` (stopped or deleted); its learnt addresses are dropped. */
  forget(id: string): void {
    const prev = this.#vms.get(id);
    this.#vms.delete(id);
    if (prev && prev.learnt.length > 0) this.#o.onChange(id);
  }

  /** What was learnt for VM `id` (undefined: not watched). */
  addresses(id: string): LearntNicAddress[] | undefined {
    const w = this.#vms.get(id);
    return w && w.learnt.map((a) => ({ ...a }));
  }

  /** One pass over every watched VM (never throws; failures are logged at debug). */
  poll(): Promise<void> {
    this.#polling ??= this.#pollAll().finally(() => (this.#polling = null));
    return this.#polling;
  }

  async #pollAll(): Promise<void> {
    const todo = [...this.#vms].filter(([, w]) => w.nics.some((n) => !n.ipam));
    if (todo.length === 0) return;
    let table: Neighbour[] | null = null;
    try {
      table = await (this.#o.neighbours ?? readNeighbours)();
    } catch (e) {
      this.#o.log.debug("nic addresses: no neighbour table", { err: errorMessage(e) });
    }
    for (const [id, w] of todo) {
      let fromGuest: Map<string, { address: string; prefix: number | null }[]> | null = null;
      if (w.qgaSock) {
        try {
          fromGuest = await (this.#o.guestAgent ?? guestAgentAddresses)(w.qgaSock);
        } catch (e) {
          this.#o.log.debug("nic addresses: no guest agent", { vm_id: id, err: errorMessage(e) });
        }
      }
      const learnt: LearntNicAddress[] = [];
      for (const nic of w.nics) {
        if (nic.ipam) continue;
        const before = learnt.length;
        const guest = (fromGuest?.get(nic.mac) ?? []).slice(0, MAX_PER_NIC);
        if (guest.length > 0) {
          for (const a of guest) {
            learnt.push({
              mac: nic.mac,
              address: a.address,
              prefix_length: a.prefix,
              source: "guest_agent",
            });
          }
          continue;
        }
        for (const n of table ?? []) {
          if (n.mac !== nic.mac || learnt.length - before >= MAX_PER_NIC) continue;
          if (learnt.some((l) => l.mac === nic.mac && l.address === n.address)) continue;
          learnt.push({
            mac: nic.mac,
            address: n.address,
            prefix_length: null,
            source: "neighbour",
          });
        }
      }
      if (this.#vms.get(id) !== w) continue;
      if (JSON.stringify(learnt) !== JSON.stringify(w.learnt)) {
        w.learnt = learnt;
        this.#o.log.info("nic addresses learnt", {
          vm_id: id,
          addresses: learnt.map((l) => `${l.mac}=${l.address} (${l.source})`),
        });
        this.#o.onChange(id);
      }
    }
  }

  /** Polls every `intervalMs` until stopped. */
  start(intervalMs = NIC_ADDRESS_POLL_MS): { stop(): Promise<void> } {
    let stopped = false;
    const timer = setInterval(() => {
      if (!stopped) void this.poll();
    }, intervalMs);
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        await this.#polling;
      },
    };
  }
}
