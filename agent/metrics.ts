/**
 * Prometheus metrics of the agent (npm `prom-client`): per running VM, read at scrape time —
 *
 * - `otherix_vm_cpu_seconds_total{vm,id}`: CPU time of the VM's QEMU process (user + system,
 *   whole seconds: `ps -o cputimes`);
 * - `otherix_vm_memory_bytes{vm,id}`: resident memory of that process (`ps -o rss`, KiB × 1024);
 * - `otherix_vm_block_read_bytes_total{vm,id,device}` / `…_write_bytes_total`: QMP
 *   `query-blockstats` `rd_bytes` / `wr_bytes` per block device (`device`, else `qdev`, else
 *   `node-name`);
 * - `otherix_vm_network_receive_bytes_total{vm,id,interface}` / `…_transmit_bytes_total`: the
 *   VM's TAP devices as the host counts them (`ip -s -j link show dev TAP`: the host's rx is
 *   what the guest sent; the names follow the host's view, like node_exporter). A VM on the
 *   user-mode NAT NIC only has no TAP and no network series.
 *
 * The agent's sandbox refuses `/proc` (DESIGN.md), hence `ps` (in the run allowlist,
 * scripts/permissions.ts). One `ps` per scrape covers every VM; QMP and `ip` run per VM, in
 * parallel. A VM whose source fails is left out of that metric for that scrape (it may be
 * stopping); `otherix_agent_scrape_errors_total{source}` counts such failures.
 *
 * Served on the agent's mTLS port (`GET /metrics`, control-plane certificate) and, when
 * `metrics.listen` is set, on a plain-HTTP port for a Prometheus without client certificates
 * (agent/main.ts).
 *
 * @module
 */
import client from "prom-client";
import type { RunningVm } from "./vms.ts";
import { hostRunner, type Runner } from "./net/exec.ts";

/** Per-process figures from `ps`: CPU seconds (user + system), resident bytes. */
export interface ProcessFigures {
  cpuSeconds: number;
  rssBytes: number;
}

/**
 * Parses `ps -o pid=,cputimes=,rss=` output (one `PID SECONDS KIB` line per process; ps
 * prints nothing for a pid that is gone).
 */
export function parsePsOutput(text: string): Map<number, ProcessFigures> {
  const out = new Map<number, ProcessFigures>();
  for (const line of text.split("\n")) {
    const m = line.trim().match(/^(\d+)\s+(\d+)\s+(\d+)$/);
    if (m) out.set(Number(m[1]), { cpuSeconds: Number(m[2]), rssBytes: Number(m[3]) * 1024 });
  }
  return out;
}

/** Read and written bytes of one block device. */
export interface BlockFigures {
  device: string;
  readBytes: number;
  writeBytes: number;
}

/** Reads QMP `query-blockstats` (a list of `{device, qdev, node-name, stats}`). */
export function parseBlockstats(reply: unknown): BlockFigures[] {
  if (!Array.isArray(reply)) return [];
  return reply.flatMap((b) => {
    const stats = b?.stats;
    const device = b?.device || b?.qdev || b?.["node-name"];
    if (!device || typeof stats?.rd_bytes !== "number") return [];
    return [{ device: String(device), readBytes: stats.rd_bytes, writeBytes: stats.wr_bytes }];
  });
}

/** Host-side byte counters of a link: `ip -s -j link show dev X` (`stats64.rx/tx.bytes`). */
export function parseIpLinkStats(text: string): { rxBytes: number; txBytes: number } | null {
  try {
    const link = JSON.parse(text)?.[0];
    const rx = link?.stats64?.rx?.bytes ?? link?.stats?.rx?.bytes;
    const tx = link?.stats64?.tx?.bytes ?? link?.stats?.tx?.bytes;
    return typeof rx === "number" && typeof tx === "number" ? { rxBytes: rx, txBytes: tx } : null;
  } catch {
    return null;
  }
}

/** What {@link AgentMetrics} reads. */
export interface AgentMetricsSource {
  /** The running VMs (agent/vms.ts `VmManager.running`). */
  running(): RunningVm[];
}

/** The agent's metrics registry. */
export class AgentMetrics {
  readonly registry = new client.Registry();
  readonly #source: AgentMetricsSource;
  readonly #run: Runner;
  readonly #errors: client.Counter<"source">;

  /** @param run runs `ps` and `ip` (tests may wrap it; default: the host) */
  constructor(source: AgentMetricsSource, run: Runner = hostRunner) {
    this.#source = source;
    this.#run = run;
    this.#errors = new client.Counter({
      name: "otherix_agent_scrape_errors_total",
      help: "VM figures a scrape could not read, by source (ps, qmp, ip).",
      labelNames: ["source"] as const,
      registers: [this.registry],
    });
  }

  /** The exposition text (Prometheus text format 0.0.4) of one scrape. */
  async render(): Promise<string> {
    // Fresh families per scrape: the VM set changes, and a gone VM must not linger.
    const reg = new client.Registry();
    const vms = this.#source.running();
    const labels = (vm: RunningVm) => ({ vm: vm.name, id: vm.id });
    const [procs, blocks, nets] = await Promise.all([
      this.#ps(vms),
      Promise.all(vms.map((vm) => this.#blockstats(vm))),
      Promise.all(vms.map((vm) => this.#links(vm))),
    ]);
    const counter = (name: string, help: string, extra: string[] = []) =>
      new client.Counter({ name, help, labelNames: ["vm", "id", ...extra], registers: [reg] });
    const cpu = counter(
      "otherix_vm_cpu_seconds_total",
      "CPU time of the VM's QEMU process (user + system), seconds.",
    );
    const mem = new client.Gauge({
      name: "otherix_vm_memory_bytes",
      help: "Resident memory of the VM's QEMU process, bytes.",
      labelNames: ["vm", "id"],
      registers: [reg],
    });
    const rd = counter(
      "otherix_vm_block_read_bytes_total",
      "Bytes read by the guest, per block device (QMP query-blockstats).",
      ["device"],
    );
    const wr = counter(
      "otherix_vm_block_write_bytes_total",
      "Bytes written by the guest, per block device (QMP query-blockstats).",
      ["device"],
    );
    const rx = counter(
      "otherix_vm_network_receive_bytes_total",
      "Bytes the host received on the VM's TAP device (sent by the guest).",
      ["interface"],
    );
    const tx = counter(
      "otherix_vm_network_transmit_bytes_total",
      "Bytes the host transmitted on the VM's TAP device (received by the guest).",
      ["interface"],
    );
    vms.forEach((vm, i) => {
      const p = procs.get(vm.pid);
      if (p) {
        cpu.inc(labels(vm), p.cpuSeconds);
        mem.set(labels(vm), p.rssBytes);
      }
      for (const b of blocks[i]) {
        rd.inc({ ...labels(vm), device: b.device }, b.readBytes);
        wr.inc({ ...labels(vm), device: b.device }, b.writeBytes);
      }
      for (const n of nets[i]) {
        rx.inc({ ...labels(vm), interface: n.tap }, n.rxBytes);
        tx.inc({ ...labels(vm), interface: n.tap }, n.txBytes);
      }
    });
    const merged = client.Registry.merge([reg, this.registry]);
    return await merged.metrics();
  }

  /** The Prometheus content type of {@link render}'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  async #ps(vms: RunningVm[]): Promise<Map<number, ProcessFigures>> {
    if (vms.length === 0) return new Map();
    const r = await this.#run("ps", [
      "-o",
      "pid=,cputimes=,rss=",
      "-p",
      vms.map((v) => v.pid).join(","),
    ]);
    // ps exits 1 when some pid is gone; what it printed still counts.
    const found = parsePsOutput(r.stdout);
    if (found.size < vms.length) this.#errors.inc({ source: "ps" }, vms.length - found.size);
    return found;
  }

  async #blockstats(vm: RunningVm): Promise<BlockFigures[]> {
    try {
      return parseBlockstats(await vm.qmp.execute("query-blockstats"));
    } catch {
      this.#errors.inc({ source: "qmp" });
      return [];
    }
  }

  async #links(vm: RunningVm): Promise<{ tap: string; rxBytes: number; txBytes: number }[]> {
    const out = [];
    for (const tap of vm.taps) {
      const r = await this.#run("ip", ["-s", "-j", "link", "show", "dev", tap]);
      const stats = r.code === 0 ? parseIpLinkStats(r.stdout) : null;
      if (stats) out.push({ tap, ...stats });
      else this.#errors.inc({ source: "ip" });
    }
    return out;
  }
}
