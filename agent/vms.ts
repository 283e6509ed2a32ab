/**
 * The VMs this agent hosts: create (image → disk → seed → QEMU), the lifecycle verbs
 * (agent/actions.ts), delete, re-adoption after an agent restart, exit detection, observation
 * (phases, QEMU exits, change notifications), console log and console target.
 *
 * Files per VM (DESIGN.md "Agent files"): `<state>/vms/<id>/{disk.qcow2, seed.iso,
 * serial.log, vm.json, state.json}` and `<run>/vms/<id>/{qmp.sock, serial.sock, qemu.pid}`.
 * `vm.json` (the create request, its image URL's credentials redacted, plus the resolved image,
 * its format and the accelerator, for operators) is written once disk and seed are complete,
 * so its presence marks a fully prepared VM. `state.json` (agent/vm_state.ts) remembers
 * whether QEMU should be running and its last exit.
 *
 * NICs (a create request's `nics`, shared/api/network_agent.ts; kept in `vm.json`): their
 * networks stay wanted on the node from the create on, each QEMU launch first builds them and
 * the VM's TAPs (agent/net/manager.ts `plumb`), the seed carries their `network-config`, and a
 * delete removes the TAPs. A VM without NICs has QEMU's user-mode NAT NIC.
 *
 * QEMU outlives the agent (agent/qemu.ts: `-daemonize`, pidfile, `-no-shutdown`). The agent
 * holds one QMP session per running VM:
 * - the session closing means QEMU exited; the exit is `requested` when the agent asked
 *   (stop, poweroff, delete), `guest-shutdown` when the guest powered off (QMP `SHUTDOWN`
 *   with `guest: true`: QEMU waits in status `shutdown`, and the agent quits it, unless a
 *   `stop`/`reboot` verb claimed the event), else `crashed` (`QEMU pid N exited unexpectedly`);
 * - {@link VmManager.close} (agent SIGINT/SIGTERM) closes the sessions and leaves every QEMU
 *   running.
 *
 * Re-adoption ({@link VmManager.recover}) for every prepared VM: a live QEMU holding the
 * VM's pidfile lock is adopted (QMP reconnected, phase from `query-status`, same pid; one
 * found in status `shutdown` powered off while the agent was away and is quit:
 * `guest-shutdown`). Without one, a VM whose `state.json` says QEMU should run gets exit
 * `crashed` (its run directory is there: QEMU died) or `host-reboot` (its run directory is
 * gone: the run root is a tmpfs cleared at boot). The agent never restarts a VM by itself:
 * the control plane decides (restart policy, start at boot) and sends `start`.
 *
 * Idempotency (shared/api/agent.ts): a create for a VM whose QEMU runs succeeds at once; a
 * create for a prepared but stopped VM starts QEMU on the existing disk; a delete of an
 * unknown id succeeds after removing any leftover files (and any QEMU holding its pidfile).
 * Operations on one VM id are serialized; a delete first aborts every operation queued or
 * running on that VM (a create's download is cancelled: its task fails `task_cancelled`).
 *
 * Changes are announced synchronously to {@link VmManager.subscribe} listeners (the report
 * pusher, the console bridge) the moment a phase, pid or exit changes.
 *
 * Serial logs: {@link VmManager.startSerialLogTrimmer} caps every known VM's `serial.log` at
 * `qemu.serial_log_max_bytes` (agent/serial_log.ts); the `console-log` endpoint reads the
 * tail of the current file.
 *
 * @module
 */
import { join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import type {
  AgentTaskResult,
  AgentVmActionRequest,
  AgentVmCreateRequest,
} from "../shared/api/agent.ts";
import type { Architecture } from "../shared/api/common.ts";
import type {
  CloudInitCondition,
  LearntNicAddress,
  ObservedVm,
  VmExit,
  VmExitReason,
  VmPhase,
} from "../shared/api/vm_runtime.ts";
import type { ProgressBytes, VmAction } from "../shared/api/tasks.ts";
import type { Logger } from "../shared/log.ts";
import { ProgressThrottle } from "../shared/progress_throttle.ts";
import { redactUrl } from "../shared/url_redact.ts";
import type { Accelerator } from "./accel.ts";
import { checkActionPhase, type GuestShutdownClaim, runVerb, type VerbTarget } from "./actions.ts";
import { buildSeedIso, networkConfigOf } from "./cloudinit.ts";
import { NetManager } from "./net/manager.ts";
import type { AgentNic } from "../shared/api/network_agent.ts";
import type { AgentConfig, AgentPaths } from "./config.ts";
import { createOverlay, imageInfo } from "./disks.ts";
import {
  errorMessage,
  exists,
  isWithin,
  mkdirBeneath,
  removeAll,
  writeFileAtomic,
} from "./fsutil.ts";
import { imageBasename, type ImageCache } from "./images.ts";
import { KeyedMutex } from "./lock.ts";
import {
  adoptQemu,
  buildQemuArgs,
  checkSocketPath,
  killOrphan,
  launchQemu,
  lockedPid,
  type QemuInstance,
  stopQemu,
  type VmFilePaths,
  vmFilePaths,
} from "./qemu.ts";
import type { QmpClient, QmpEvent } from "./qmp.ts";
import { tapName } from "./net/names.ts";
import { SERIAL_LOG_CHECK_INTERVAL_MS, trimSerialLog } from "./serial_log.ts";
import { CLOUD_INIT_STATE_FILE, CloudInitWatcher } from "./cloud_init.ts";
import { NicAddressWatcher } from "./nic_addresses.ts";
import { readVmState, writeVmState } from "./vm_state.ts";

/** A VM create request, with the NICs of shared/api/network_agent.ts. */
export type AgentVmCreateWithNics = AgentVmCreateRequest & { nics?: AgentNic[] };

/** What `vm.json` holds. */
export interface VmManifest {
  id: string;
  name: string;
  architecture: Architecture;
  vcpus: number;
  memory_mb: number;
  disk_gib: number;
  /**
   * The image's URL with any credentials redacted (`http://***@nas/img.qcow2`,
   * shared/url_redact.ts): they are used for the download only and never stored. Nothing
   * re-downloads from here: every create request carries the URL again.
   */
  image_url: string;
  image_sha256: string | null;
  image: string;
  /** The cached image's format (`qemu-img info`); absent in manifests of older agents. */
  image_format?: string;
  pool: { name: string; path: string };
  user_data: string | null;
  /** NICs on networks (agent/net/); absent or empty: one user-mode NAT NIC. */
  nics?: AgentNic[];
  accelerator: Accelerator;
  created_at: string;
}

/** Hooks an operation reports through (agent/tasks.ts passes the task's). */
export interface OpHooks {
  /**
   * Human-readable progress, e.g. `downloading image (12.5 MiB of 300.0 MiB)`, with the byte
   * figures of the step when it has them (an image download; throttled by the caller with
   * shared/progress_throttle.ts); a call without `bytes` clears them.
   */
  progress?: (text: string, bytes?: ProgressBytes | null) => void;
  /** Records a completed step for the task's `timings` (`image`, `spawn`, `qmp_command`…). */
  mark?: (step: string) => void;
}

/** Where a VM's QEMU can be reached for the serial console (agent/console.ts). */
export interface ConsoleTarget {
  /** QEMU's serial chardev socket (`<run>/vms/<id>/serial.sock`). */
  serialSock: string;
}

/** A change listener: `removed` is true once a deleted VM's files are gone. */
export type VmListener = (vm: ObservedVm, removed: boolean) => void;

interface VmRecord {
  id: string;
  name: string;
  /** Null while the first create prepares the VM. */
  manifest: VmManifest | null;
  phase: VmPhase;
  /** The running QEMU and the agent's session with it. */
  qemu: QemuInstance | null;
  /** A live QEMU found on start whose QMP does not answer yet (adoption retried). */
  pendingPid: number | null;
  exit: VmExit | null;
  /** Whether QEMU is meant to be running (persisted in state.json). */
  running: boolean;
  /** Set when the agent ends QEMU itself: the exit is `requested` with this detail. */
  exitRequested: string | null;
  /** Set when the guest powered off on its own: the exit is `guest-shutdown`. */
  guestShutdown: string | null;
  /** A verb waiting for the guest's power-off (stop, reboot) takes the event here. */
  shutdownClaim: (() => void) | null;
  /** state.json writes, in order. */
  persisting: Promise<void>;
}

/** Dependencies of {@link VmManager}. */
export interface VmManagerOptions {
  paths: AgentPaths;
  qemu: AgentConfig["qemu"];
  /** The node's accelerator (used for guests of the host's architecture). */
  accelerator: Accelerator;
  /** The host's architecture; other guest architectures run under TCG. */
  hostArch: Architecture;
  images: ImageCache;
  log: Logger;
  /** Appended to every QEMU command line (tests use it to provoke failures). */
  extraQemuArgs?: string[];
  /** How long QEMU gets to exit after QMP `quit` before SIGKILL, ms (default 10 000). */
  stopGraceMs?: number;
  /** UEFI firmware for arm64 guests (null: none). */
  firmwareArm64?: string | null;
  /** How long re-adoption waits for a live QEMU's QMP socket before retrying, ms (5 000). */
  adoptTimeoutMs?: number;
  /** The node's networks (default: one on the host, under `paths`' state and run roots). */
  net?: NetManager;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A VM whose QEMU runs, as the metrics collector reads it (agent/metrics.ts). */
export interface RunningVm {
  id: string;
  name: string;
  /** QEMU's pid. */
  pid: number;
  /** The agent's open QMP session (read-only use: `query-*` commands). */
  qmp: QmpClient;
  /** Its TAP devices, NIC order (empty: user-mode NAT only). */
  taps: string[];
}

/** Registry and lifecycle of the agent's VMs. */
export class VmManager {
  #vms = new Map<string, VmRecord>();
  #locks = new KeyedMutex();
  #ops = new Map<string, Set<AbortController>>();
  #listeners = new Set<VmListener>();
  #background = new Set<Promise<unknown>>();
  #o: VmManagerOptions;
  #closing = false;
  #trimmer: { stop(): Promise<void> } | null = null;
  /** cloud-init readiness from the serial logs (agent/cloud_init.ts). */
  #cloudInit: CloudInitWatcher;
  /** Addresses of NICs without IPAM (agent/nic_addresses.ts). */
  #nicAddresses: NicAddressWatcher;
  #net: NetManager;

  constructor(opts: VmManagerOptions) {
    this.#o = opts;
    const announce = (id: string) => {
      const r = this.#vms.get(id);
      if (r) this.#notify(r);
    };
    this.#cloudInit = new CloudInitWatcher({
      log: opts.log,
      stateFile: join(opts.paths.stateDir, CLOUD_INIT_STATE_FILE),
      onChange: announce,
    });
    this.#nicAddresses = new NicAddressWatcher({ log: opts.log, onChange: announce });
    this.#net = opts.net ??
      new NetManager({ stateDir: opts.paths.stateDir, runDir: opts.paths.runDir, log: opts.log });
  }

  /** The node's networks and the VMs' NICs (agent/net/manager.ts). */
  get net(): NetManager {
    return this.#net;
  }

  /**
   * Files of VM `id`.
   *
   * @throws ApiError `validation_failed` when `id` is not a UUID (so no id can name a path
   *   outside the VM directories)
   */
  files(id: string): VmFilePaths {
    if (!UUID_RE.test(id)) throw new ApiError("validation_failed", `vm id ${id} is not a UUID`);
    return vmFilePaths(this.#o.paths.vmsDir, this.#o.paths.vmSocketsDir, id);
  }

  /** QEMU's exit window after QMP `quit`, ms. */
  get #graceMs(): number {
    return this.#o.stopGraceMs ?? 10_000;
  }

  /** Observed VMs (heartbeats, reports, `GET /v1/vms`), sorted by name then id. */
  list(): ObservedVm[] {
    return [...this.#vms.values()]
      .map((r) => this.#observe(r))
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  }

  /** VMs with a live QEMU and an open QMP session (for metrics; nothing is changed). */
  running(): RunningVm[] {
    return [...this.#vms.values()].flatMap((r) =>
      r.qemu && !r.qemu.qmp.closedLocally
        ? [{
          id: r.id,
          name: r.name,
          pid: r.qemu.pid,
          qmp: r.qemu.qmp,
          taps: (r.manifest?.nics ?? []).map((n) => tapName(r.id, n.index)),
        }]
        : []
    );
  }

  /** The observed VM `id`, if known. */
  get(id: string): ObservedVm | undefined {
    const r = this.#vms.get(id);
    return r && this.#observe(r);
  }

  #observe(r: VmRecord): ObservedVm {
    return {
      id: r.id,
      name: r.name,
      phase: r.phase,
      pid: r.qemu?.pid ?? r.pendingPid,
      exit: r.exit && { ...r.exit },
      ...cloudInitOf(this.#cloudInit.condition(r.id)),
      ...nicAddressesOf(this.#nicAddresses.addresses(r.id)),
    };
  }

  /**
   * Calls `listener(vm, removed)` synchronously whenever a VM's phase, pid or exit changes,
   * and once with `removed: true` when a deleted VM is gone. A listener that throws is
   * ignored.
   *
   * @returns a function that unsubscribes
   */
  subscribe(listener: VmListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(r: VmRecord, removed = false): void {
    const vm = this.#observe(r);
    for (const l of [...this.#listeners]) {
      try {
        l(vm, removed);
      } catch (e) {
        this.#o.log.warn("vm: change listener failed", { err: errorMessage(e) });
      }
    }
  }

  #setPhase(r: VmRecord, phase: VmPhase): void {
    if (r.phase === phase) return;
    r.phase = phase;
    this.#notify(r);
  }

  #persist(r: VmRecord): Promise<void> {
    const files = this.files(r.id);
    const state = { running: r.running, exit: r.exit };
    r.persisting = r.persisting.then(() => writeVmState(files.stateJson, state)).catch((e) => {
      if (r.phase === "deleting") return;
      this.#o.log.warn("vm: cannot write state.json", { vm_id: r.id, err: errorMessage(e) });
    });
    return r.persisting;
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#background.add(p);
    p.finally(() => this.#background.delete(p)).catch(() => {});
    return p;
  }

  /**
   * Runs `fn` as an operation on VM `id`: serialized with the VM's other operations, and
   * aborted (its signal) by a delete of the VM or by {@link close}.
   */
  #op<T>(id: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ctrl = new AbortController();
    let set = this.#ops.get(id);
    if (!set) this.#ops.set(id, set = new Set());
    set.add(ctrl);
    if (this.#closing) ctrl.abort(shuttingDown());
    return this.#locks.run(id, () => fn(ctrl.signal), ctrl.signal).finally(() => {
      set.delete(ctrl);
      if (set.size === 0 && this.#ops.get(id) === set) this.#ops.delete(id);
    });
  }

  // ---------------------------------------------------------------------------------------
  // QEMU sessions and exits

  /** Takes over `q` as VM `r`'s QEMU: events and the session's end are watched. */
  #attach(r: VmRecord, q: QemuInstance): void {
    r.qemu = q;
    r.pendingPid = null;
    r.exitRequested = null;
    r.guestShutdown = null;
    const off = q.qmp.onEvent((ev) => this.#onEvent(r, q, ev));
    q.qmp.closed.then(() => {
      off();
      if (!q.qmp.closedLocally) this.#onExit(r, q);
    });
  }

  #onEvent(r: VmRecord, q: QemuInstance, ev: QmpEvent): void {
    if (r.qemu !== q) return;
    if (ev.event !== "SHUTDOWN" || ev.data.guest !== true) return;
    // `guest-reset` arrives as SHUTDOWN only with -no-reboot: a reset, not a power-off.
    if (ev.data.reason === "guest-reset") return;
    if (r.shutdownClaim) {
      r.shutdownClaim();
      return;
    }
    // The agent is ending QEMU already (poweroff, delete).
    if (r.exitRequested !== null || r.phase === "deleting") return;
    // The guest powered itself off; QEMU (-no-shutdown) waits for the agent to end it.
    r.guestShutdown = `QMP SHUTDOWN reason ${ev.data.reason ?? "unknown"}`;
    this.#o.log.info("vm: the guest powered off; quitting qemu", { vm_id: r.id, pid: q.pid });
    this.#setPhase(r, "stopping");
    this.#track(stopQemu(q, this.#graceMs)).catch((e) =>
      this.#o.log.error("vm: cannot stop qemu after a guest shutdown", {
        vm_id: r.id,
        err: errorMessage(e),
      })
    );
  }

  /** Records the exit of `q` (idempotent: only for the VM's current QEMU). */
  #onExit(r: VmRecord, q: QemuInstance): void {
    if (r.qemu !== q) return;
    r.qemu = null;
    let reason: VmExitReason = "crashed";
    let detail = `QEMU pid ${q.pid} exited unexpectedly`;
    if (r.exitRequested !== null) [reason, detail] = ["requested", r.exitRequested];
    else if (r.guestShutdown !== null) [reason, detail] = ["guest-shutdown", r.guestShutdown];
    r.exitRequested = null;
    r.guestShutdown = null;
    this.#recordExit(r, reason, detail);
    const fields = { vm_id: r.id, vm: r.name, pid: q.pid, reason, detail };
    if (reason === "crashed") this.#o.log.warn("qemu: exited unexpectedly", fields);
    else this.#o.log.info("qemu: exited", fields);
  }

  #recordExit(r: VmRecord, reason: VmExitReason, detail: string | null): void {
    this.#nicAddresses.forget(r.id);
    r.exit = { reason, at: new Date().toISOString(), detail };
    r.running = false;
    if (r.phase === "deleting") {
      this.#notify(r);
      return;
    }
    r.phase = "stopped";
    this.#notify(r);
    void this.#persist(r);
  }

  /** Ends VM `r`'s QEMU on the agent's behalf; resolves once the exit is recorded on disk. */
  async #terminate(r: VmRecord, detail: string): Promise<void> {
    const q = r.qemu;
    if (!q) return;
    r.exitRequested = detail;
    const outcome = await stopQemu(q, this.#graceMs);
    if (outcome === "killed") {
      this.#o.log.warn("qemu: did not quit in time; killed", { vm_id: r.id, pid: q.pid });
    }
    this.#onExit(r, q);
    await r.persisting; // the verb's task ends once state.json says so
  }

  /** Launches VM `r`'s QEMU on its prepared files and makes it the VM's session. */
  async #launch(
    r: VmRecord,
    m: VmManifest,
    paused: boolean,
    hooks: OpHooks,
  ): Promise<{ accelerator: Accelerator; phase: VmPhase }> {
    const files = this.files(r.id);
    checkSocketPath(files.qmpSock);
    checkSocketPath(files.serialSock);
    const accelerator = this.#acceleratorFor(m.architecture);
    const binary = m.architecture === "arm64"
      ? this.#o.qemu.binary_arm64
      : this.#o.qemu.binary_amd64;
    // NICs on networks: their networks and TAPs exist before QEMU attaches (after a host
    // reboot, this recreates them).
    const nics = [...(m.nics ?? [])].sort((a, b) => a.index - b.index);
    const taps = nics.length ? await this.#net.plumb(r.id, m.name, nics) : [];
    const args = buildQemuArgs({
      nics: taps.map((tap, i) => ({ tap, mac: nics[i].mac })),
      name: m.name,
      architecture: m.architecture,
      accelerator,
      vcpus: m.vcpus,
      memoryMb: m.memory_mb,
      files,
      firmwareArm64: this.#o.firmwareArm64 ?? null,
      // Always -S: the guest's vCPUs start only once the agent's QMP session is attached
      // (`cont` below), so no event (a guest that powers off at once) happens unseen.
      paused: true,
      extraArgs: this.#o.extraQemuArgs,
    });
    await removeAll(files.sockDir);
    await Deno.mkdir(files.sockDir, { recursive: true, mode: 0o750 });
    await this.#cloudInit.boot(r.id, files.serialLog);
    this.#watchNics(r, nics);
    const log = this.#o.log.with({ vm_id: r.id, vm: r.name });
    log.info(`qemu: starting (${accelerator})`, { argv: [binary, ...args].join(" ") });
    const started = performance.now();
    let q;
    try {
      q = await launchQemu({
        binary,
        args,
        pidFile: files.pidFile,
        qmpSock: files.qmpSock,
        startTimeoutMs: this.#o.qemu.start_timeout_seconds * 1000,
        onSpawned: () => hooks.mark?.("spawn"),
      });
    } catch (e) {
      await removeAll(files.sockDir).catch(() => {});
      throw e;
    }
    hooks.mark?.("qmp_ready");
    r.running = true;
    r.phase = paused ? "paused" : "running";
    r.qemu = q; // announced with its pid
    this.#notify(r);
    const persisted = this.#persist(r);
    this.#attach(r, q);
    if (!paused) {
      try {
        await q.qmp.execute("cont");
      } catch (e) {
        // QEMU went away at once: its exit (seen by the session) explains it.
        log.warn("qemu: cont failed", { err: errorMessage(e) });
      }
    }
    log.info("qemu: running", {
      pid: q.pid,
      status: q.status,
      ms: Math.round(performance.now() - started),
    });
    await persisted;
    return { accelerator, phase: r.phase };
  }

  #acceleratorFor(arch: Architecture): Accelerator {
    return arch === this.#o.hostArch ? this.#o.accelerator : "tcg";
  }

  // ---------------------------------------------------------------------------------------
  // Recovery

  /**
   * Startup: creates the VM directories, registers every prepared VM (`vm.json`) and
   * re-adopts its QEMU when one still runs (see the module doc), removes half-created VM
   * directories, and kills QEMUs left in run directories of VMs that no longer exist.
   */
  async recover(): Promise<void> {
    const { vmsDir, vmSocketsDir } = this.#o.paths;
    await Deno.mkdir(vmsDir, { recursive: true, mode: 0o750 });
    await Deno.mkdir(vmSocketsDir, { recursive: true, mode: 0o750 });
    await this.#net.load();
    const known = new Set<string>();
    for await (const e of Deno.readDir(vmsDir)) {
      if (!UUID_RE.test(e.name) || !e.isDirectory) continue;
      const files = this.files(e.name);
      const manifest = await readManifest(files.vmJson);
      if (!manifest || !(await this.#isPrepared(files))) {
        this.#o.log.warn("vm: removing half-created VM directory", { vm_id: e.name });
        await killOrphan(files.pidFile).catch(() => null);
        await removeAll(files.vmDir);
        await removeAll(files.sockDir);
        if (!this.#net.idle) {
          await this.#net.removeTaps(e.name).catch((err) =>
            this.#o.log.warn("vm: cannot remove TAPs", { vm_id: e.name, err: errorMessage(err) })
          );
        }
        continue;
      }
      known.add(e.name);
      this.#net.register(e.name, manifest.name, manifest.nics ?? []);
      await this.#recoverOne(e.name, manifest, files);
    }
    for await (const e of Deno.readDir(vmSocketsDir)) {
      if (known.has(e.name)) continue;
      if (UUID_RE.test(e.name)) {
        const pid = await killOrphan(this.files(e.name).pidFile).catch(() => null);
        if (pid !== null) {
          this.#o.log.warn("vm: killed QEMU of a VM that no longer exists", {
            vm_id: e.name,
            pid,
          });
        }
      }
      await removeAll(join(vmSocketsDir, e.name));
    }
    // The networks of the persisted desired set and of the VMs found (after a host reboot:
    // bridges, VXLAN devices, dnsmasq rebuilt; TAPs come back with each VM's start).
    if (!this.#net.idle) await this.#net.converge();
  }

  async #recoverOne(id: string, m: VmManifest, files: VmFilePaths): Promise<void> {
    const state = await readVmState(files.stateJson);
    const r: VmRecord = {
      id,
      name: m.name,
      manifest: m,
      phase: "stopped",
      qemu: null,
      pendingPid: null,
      exit: state.exit,
      running: state.running,
      exitRequested: null,
      guestShutdown: null,
      shutdownClaim: null,
      persisting: Promise.resolve(),
    };
    this.#vms.set(id, r);
    const log = this.#o.log.with({ vm_id: id, vm: m.name });
    const sockDirExists = await exists(files.sockDir);
    let q;
    try {
      q = await adoptQemu(files.pidFile, files.qmpSock, Date.now() + this.#adoptTimeoutMs);
    } catch (e) {
      // Alive (pidfile locked) but its QMP socket does not answer: keep trying.
      r.pendingPid = await lockedPid(files.pidFile).catch(() => null);
      log.warn("vm: QEMU runs but its QMP socket does not answer; retrying", {
        pid: r.pendingPid,
        err: errorMessage(e),
      });
      this.#adoptLater(r, files);
      return;
    }
    if (q) {
      this.#adopted(r, q);
      return;
    }
    if (state.running) {
      const [reason, detail]: [VmExitReason, string] = sockDirExists
        ? ["crashed", "QEMU was gone when the agent started (its pidfile is stale or missing)"]
        : ["host-reboot", `the VM's run directory ${files.sockDir} was gone (host rebooted)`];
      this.#recordExit(r, reason, detail);
      log.warn(`vm: QEMU did not survive while the agent was down (${reason})`, { detail });
    }
    await removeAll(files.sockDir);
  }

  get #adoptTimeoutMs(): number {
    return this.#o.adoptTimeoutMs ?? 5000;
  }

  #adopted(r: VmRecord, q: QemuInstance & { status: string }): void {
    this.#attach(r, q);
    this.#cloudInit.resume(r.id, this.files(r.id).serialLog);
    this.#watchNics(r, r.manifest?.nics ?? []);
    const log = this.#o.log.with({ vm_id: r.id, vm: r.name });
    if (q.status === "shutdown") {
      // The guest powered off while the agent was away; QEMU (-no-shutdown) still waits.
      r.guestShutdown = "the guest powered off while the agent was down";
      this.#setPhase(r, "stopping");
      log.info("vm: re-adopted a powered-off QEMU; quitting it", { pid: q.pid });
      this.#track(stopQemu(q, this.#graceMs)).catch((e) =>
        log.error("vm: cannot stop qemu", { err: errorMessage(e) })
      );
      return;
    }
    r.phase = q.status === "running" ? "running" : "paused";
    this.#notify(r);
    if (!r.running) {
      r.running = true;
      void this.#persist(r);
    }
    log.info("vm: re-adopted running QEMU", { pid: q.pid, status: q.status });
  }

  #adoptLater(r: VmRecord, files: VmFilePaths): void {
    this.#setPhase(r, "running");
    const retry = async () => {
      while (!this.#closing && this.#vms.get(r.id) === r && !r.qemu) {
        await new Promise((res) => setTimeout(res, 2000));
        if (this.#closing || this.#vms.get(r.id) !== r) return;
        try {
          const q = await adoptQemu(
            files.pidFile,
            files.qmpSock,
            Date.now() + this.#adoptTimeoutMs,
          );
          if (!q) {
            r.pendingPid = null;
            this.#recordExit(r, "crashed", "QEMU exited before the agent could reconnect");
            return;
          }
          this.#adopted(r, q);
          return;
        } catch {
          // still unresponsive
        }
      }
    };
    this.#track(retry());
  }

  async #isPrepared(files: VmFilePaths): Promise<boolean> {
    return await exists(files.vmJson) && await exists(files.disk) && await exists(files.seed);
  }

  // ---------------------------------------------------------------------------------------
  // Operations

  /**
   * Creates (or re-starts) VM `req.vm.id` and returns once QEMU reports `running`.
   *
   * @throws ApiError `path_not_allowed` (pool path outside `<state>/pools`),
   *   `validation_failed` (image basename), `download_failed`, `checksum_mismatch`,
   *   `image_unavailable`, `vm_create_failed` (disk, seed, files), `network_setup_failed` (a
   *   NIC's network or TAP, agent/net/), `qemu_spawn_failed`, `task_cancelled` (deleted
   *   meanwhile). A freshly created VM leaves no files behind on
   *   failure; a prepared one keeps its disk and stays `stopped`.
   */
  create(req: AgentVmCreateWithNics, hooks: OpHooks = {}): Promise<AgentTaskResult> {
    this.files(req.vm.id);
    return this.#op(req.vm.id, (signal) => this.#create(req, hooks, signal));
  }

  async #create(
    req: AgentVmCreateWithNics,
    hooks: OpHooks,
    signal: AbortSignal,
  ): Promise<AgentTaskResult> {
    const { vm, pool } = req;
    const nics = req.nics ?? [];
    const progress = hooks.progress ?? (() => {});
    const mark = hooks.mark ?? (() => {});
    const log = this.#o.log.with({ vm_id: vm.id, vm: vm.name });
    const existing = this.#vms.get(vm.id);
    if ((existing?.qemu || existing?.pendingPid) && existing.manifest) {
      return {
        phase: existing.phase,
        accelerator: this.#acceleratorFor(existing.manifest.architecture),
        image: existing.manifest.image,
        image_cache_hit: true,
        ...(existing.manifest.image_format ? { image_format: existing.manifest.image_format } : {}),
      };
    }
    if (!isWithin(this.#o.paths.poolsDir, pool.path)) {
      throw new ApiError(
        "path_not_allowed",
        `pool ${pool.name}: path ${pool.path} is not under the agent's pools directory ${this.#o.paths.poolsDir}`,
      );
    }
    imageBasename(vm.image_url); // validation_failed before anything exists
    const files = this.files(vm.id);
    checkSocketPath(files.qmpSock);
    checkSocketPath(files.serialSock);
    const prepared = await this.#isPrepared(files);
    const r: VmRecord = existing ?? {
      id: vm.id,
      name: vm.name,
      manifest: null,
      phase: "creating",
      qemu: null,
      pendingPid: null,
      exit: null,
      running: false,
      exitRequested: null,
      guestShutdown: null,
      shutdownClaim: null,
      persisting: Promise.resolve(),
    };
    if (!existing) {
      this.#vms.set(vm.id, r);
      this.#notify(r);
    }
    this.#setPhase(r, prepared ? "starting" : "creating");
    // Its networks stay wanted on this node from now on (agent/net/manager.ts).
    if (nics.length && !prepared) this.#net.register(vm.id, vm.name, nics);
    try {
      try {
        await Deno.mkdir(this.#o.paths.poolsDir, { recursive: true, mode: 0o750 });
        await mkdirBeneath(this.#o.paths.poolsDir, join(pool.path, "images"), 0o750);
      } catch (e) {
        throw new ApiError(
          "image_unavailable",
          `pool ${pool.name}: cannot prepare ${pool.path}/images: ${errorMessage(e)}`,
        );
      }
      progress("fetching image");
      const throttle = new ProgressThrottle(() => performance.now());
      const img = await this.#o.images.ensure({
        poolPath: pool.path,
        poolName: pool.name,
        url: vm.image_url,
        sha256: vm.image_sha256,
        signal,
        onProgress: (n, total) => {
          const bytes = { done_bytes: n, total_bytes: total };
          if (!throttle.offer(bytes)) return;
          progress(
            `downloading image (${mib(n)} MiB${total !== null ? ` of ${mib(total)} MiB` : ""})`,
            bytes,
          );
        },
      });
      mark("image");
      log.info(img.cacheHit ? "image: cache hit" : "image: downloaded", {
        image: img.path,
        source: img.source,
        sha256: img.sha256,
        bytes: img.sizeBytes,
      });
      let manifest = prepared ? await readManifest(files.vmJson) : null;
      if (!manifest) {
        signal.throwIfAborted();
        await removeAll(files.vmDir);
        await Deno.mkdir(files.vmDir, { recursive: true, mode: 0o750 });
        progress("creating disk");
        const info = await imageInfo(this.#o.qemu.qemu_img, img.path);
        await createOverlay(this.#o.qemu.qemu_img, img.path, info, files.disk, vm.disk_gib);
        mark("overlay");
        signal.throwIfAborted();
        progress("building cloud-init seed");
        await buildSeedIso({
          isoBuilder: this.#o.qemu.iso_builder,
          vmId: vm.id,
          hostname: vm.name,
          userData: vm.user_data,
          ...(nics.length ? { networkConfig: networkConfigOf(nics) } : {}),
          output: files.seed,
        });
        mark("seed");
        manifest = {
          id: vm.id,
          name: vm.name,
          architecture: vm.architecture,
          vcpus: vm.vcpus,
          memory_mb: vm.memory_mb,
          disk_gib: vm.disk_gib,
          image_url: redactUrl(vm.image_url),
          image_sha256: vm.image_sha256 ?? null,
          image: img.basename,
          image_format: info.format,
          pool,
          user_data: vm.user_data ?? null,
          ...(nics.length ? { nics } : {}),
          accelerator: this.#acceleratorFor(vm.architecture),
          created_at: new Date().toISOString(),
        };
        await writeFileAtomic(files.vmJson, JSON.stringify(manifest, null, 2) + "\n", 0o640);
      }
      r.manifest = manifest;
      signal.throwIfAborted();
      progress(`starting qemu (${this.#acceleratorFor(manifest.architecture)})`);
      const started = await this.#launch(r, manifest, false, hooks);
      return {
        phase: started.phase,
        accelerator: started.accelerator,
        image: manifest.image,
        image_cache_hit: img.cacheHit,
        ...(manifest.image_format ? { image_format: manifest.image_format } : {}),
      };
    } catch (e) {
      const err = signal.aborted ? signal.reason : e;
      log.warn("vm: create failed", { err: errorMessage(err) });
      if (prepared) {
        // Keep the existing disk (the guest's data); the VM stays known, stopped.
        this.#setPhase(r, "stopped");
      } else {
        await removeAll(files.vmDir).catch((err) =>
          log.error("vm: cannot clean up VM directory", { err: errorMessage(err) })
        );
        await removeAll(files.sockDir).catch(() => {});
        if (nics.length) {
          await this.#net.unplumb(vm.id).catch((e) =>
            log.error("vm: cannot remove NICs", { err: errorMessage(e) })
          );
        }
        if (existing) this.#setPhase(r, "stopped");
        else this.#forget(r);
      }
      throw err;
    }
  }

  /** Looks for the addresses of VM `r`'s NICs without IPAM while it runs. */
  #watchNics(r: VmRecord, nics: { mac: string; address: string | null }[]): void {
    if (nics.length === 0) return;
    // The guest-agent socket, once QEMU gets a guest-agent channel there (agent/qemu.ts).
    const qga = this.files(r.id).qgaSock;
    const watched = nics.map((n) => ({ mac: n.mac, ipam: n.address !== null }));
    this.#nicAddresses.watch(r.id, watched, qga);
  }

  #forget(r: VmRecord): void {
    if (this.#vms.get(r.id) !== r) return;
    this.#vms.delete(r.id);
    this.#cloudInit.forget(r.id);
    this.#nicAddresses.forget(r.id);
    this.#notify(r, true);
  }

  /**
   * The HTTP pre-check of a verb: refuses what the VM's current phase evidently does not
   * allow (agent/actions.ts `checkActionPhase` with `settledOnly`).
   *
   * @throws ApiError `validation_failed` (id not a UUID), `vm_not_found`,
   *   `vm_invalid_state` (`details: {phase, action}`)
   */
  checkAction(id: string, action: VmAction): void {
    this.files(id);
    const r = this.#vms.get(id);
    if (!r) throw new ApiError("vm_not_found", `vm ${id} not found on this node`);
    checkActionPhase(action, r.phase, true);
  }

  /**
   * Runs lifecycle verb `req.action` on VM `id` (agent/actions.ts) once the VM's earlier
   * operations are done.
   *
   * @throws ApiError `vm_not_found`, `vm_invalid_state` (`details: {phase}`),
   *   `qemu_spawn_failed` (start), `task_cancelled` (the VM was deleted meanwhile)
   */
  action(
    id: string,
    req: Pick<AgentVmActionRequest, "action" | "timeout_seconds" | "paused">,
    hooks: OpHooks = {},
  ): Promise<AgentTaskResult> {
    this.files(id);
    return this.#op(id, async (signal) => {
      const r = this.#vms.get(id);
      if (!r) throw new ApiError("vm_not_found", `vm ${id} not found on this node`);
      // A guest that powered itself off is being quit (no operation holds the lock): judge
      // the verb once QEMU is gone.
      if (r.phase === "stopping" && r.qemu) await r.qemu.qmp.closed;
      checkActionPhase(req.action, r.phase);
      if (!r.manifest) {
        throw new ApiError("vm_invalid_state", `vm ${id} is not prepared`, { phase: r.phase });
      }
      const before = r.phase;
      let result;
      try {
        result = await runVerb(this.#verbTarget(r, r.manifest, hooks), req, {
          mark: hooks.mark ?? (() => {}),
          progress: hooks.progress ?? (() => {}),
          signal,
        });
      } catch (e) {
        // A stop that failed half-way leaves QEMU running (`stop` resumed a paused guest
        // first); a failed poweroff leaves it as it was.
        if (r.qemu && r.phase === "stopping" && !r.exitRequested && !r.guestShutdown) {
          this.#setPhase(r, req.action === "poweroff" ? before : "running");
        }
        throw e;
      }
      this.#o.log.info(`vm: ${req.action} done`, { vm_id: id, phase: result.phase });
      return result;
    });
  }

  #verbTarget(r: VmRecord, m: VmManifest, hooks: OpHooks): VerbTarget {
    return {
      id: r.id,
      get phase() {
        return r.phase;
      },
      setPhase: (p) => this.#setPhase(r, p),
      qmp: () => {
        if (!r.qemu) {
          throw new ApiError("vm_invalid_state", `vm ${r.id}: QEMU is not running`, {
            phase: r.phase,
          });
        }
        return r.qemu.qmp;
      },
      exited: () => r.qemu ? r.qemu.qmp.closed : Promise.resolve(),
      launch: async (paused) => {
        try {
          return await this.#launch(r, m, paused, hooks);
        } catch (e) {
          this.#setPhase(r, "stopped");
          throw e;
        }
      },
      terminate: (detail) => this.#terminate(r, detail),
      claimGuestShutdown: (): GuestShutdownClaim => {
        let resolve!: () => void;
        const shutdown = new Promise<void>((res) => (resolve = res));
        r.shutdownClaim = resolve;
        return {
          shutdown,
          release: () => {
            if (r.shutdownClaim === resolve) r.shutdownClaim = null;
          },
        };
      },
    };
  }

  /**
   * Deletes VM `id`: aborts every operation queued or running on it, stops QEMU (QMP `quit`,
   * SIGKILL after the grace period; a QEMU holding the VM's pidfile without a session is
   * killed too) and removes its state and run directories. Unknown ids succeed (idempotent).
   *
   * @throws ApiError `validation_failed` when `id` is not a UUID; `vm_delete_failed` when
   *   QEMU or the files cannot be removed
   */
  delete(id: string, hooks: OpHooks = {}): Promise<void> {
    const files = this.files(id);
    const reason = new ApiError("task_cancelled", `vm ${id} is being deleted`);
    for (const ctrl of this.#ops.get(id) ?? []) ctrl.abort(reason);
    return this.#op(id, async () => {
      const r = this.#vms.get(id);
      if (r) this.#setPhase(r, "deleting");
      try {
        if (r?.qemu) {
          hooks.progress?.("stopping qemu");
          await this.#terminate(r, "delete");
        }
        const orphan = await killOrphan(files.pidFile);
        if (orphan !== null) {
          this.#o.log.warn("vm: killed QEMU without a session", { vm_id: id, pid: orphan });
        }
        if (r) {
          r.pendingPid = null;
          await r.persisting;
        }
        hooks.progress?.("removing files");
        await removeAll(files.vmDir);
        await removeAll(files.sockDir);
        if (r?.manifest?.nics?.length || this.#net.hasVm(id)) {
          hooks.progress?.("removing NICs");
          await this.#net.unplumb(id);
        }
      } catch (e) {
        throw new ApiError("vm_delete_failed", `delete vm ${id}: ${errorMessage(e)}`);
      }
      hooks.mark?.("done");
      if (r) this.#forget(r);
    });
  }

  /**
   * Where the console bridge reaches VM `id`'s serial port.
   *
   * @throws ApiError `validation_failed` (id not a UUID), `vm_not_found`,
   *   `vm_invalid_state` (`details: {phase}`) when no QEMU runs for it
   */
  consoleTarget(id: string): ConsoleTarget {
    const files = this.files(id);
    const r = this.#vms.get(id);
    if (!r) throw new ApiError("vm_not_found", `vm ${id} not found on this node`);
    if (!r.qemu) {
      throw new ApiError("vm_invalid_state", `vm ${id} is ${r.phase}: QEMU is not running`, {
        phase: r.phase,
      });
    }
    return { serialSock: files.serialSock };
  }

  /**
   * The last `tailBytes` bytes of VM `id`'s serial log (empty before QEMU wrote any).
   *
   * @throws ApiError `validation_failed` when `id` is not a UUID; `vm_not_found` when the VM
   *   is neither known nor has a directory
   */
  async consoleLog(id: string, tailBytes: number): Promise<string> {
    const files = this.files(id);
    if (!this.#vms.has(id) && !(await exists(files.vmDir))) {
      throw new ApiError("vm_not_found", `vm ${id} not found on this node`);
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(files.serialLog, { read: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return "";
      throw e;
    }
    try {
      const size = (await file.stat()).size;
      const start = Math.max(0, size - tailBytes);
      await file.seek(start, Deno.SeekMode.Start);
      const buf = new Uint8Array(size - start);
      let off = 0;
      while (off < buf.length) {
        const n = await file.read(buf.subarray(off));
        if (n === null) break;
        off += n;
      }
      return new TextDecoder().decode(buf.subarray(0, off));
    } finally {
      file.close();
    }
  }

  /**
   * One pass of the serial log cap: trims the `serial.log` of every known VM that exceeds
   * `qemu.serial_log_max_bytes` to its newest half (see {@link trimSerialLog}). Never throws:
   * an I/O error is logged as a warning and the other VMs are still checked.
   *
   * @returns the number of logs trimmed
   */
  async trimSerialLogs(): Promise<number> {
    const max = this.#o.qemu.serial_log_max_bytes;
    let trimmed = 0;
    for (const id of [...this.#vms.keys()]) {
      try {
        const t = await trimSerialLog(this.files(id).serialLog, max);
        if (!t) continue;
        trimmed++;
        this.#o.log.debug("vm: serial log trimmed", {
          vm_id: id,
          before_bytes: t.beforeBytes,
          after_bytes: t.afterBytes,
        });
      } catch (e) {
        this.#o.log.warn("vm: cannot trim serial log", { vm_id: id, err: errorMessage(e) });
      }
    }
    return trimmed;
  }

  /**
   * Runs {@link trimSerialLogs} every `intervalMs` ms (default
   * {@link SERIAL_LOG_CHECK_INTERVAL_MS}; passes never overlap) until the returned `stop()`
   * or {@link close}. Starting it again replaces the running loop.
   */
  startSerialLogTrimmer(intervalMs = SERIAL_LOG_CHECK_INTERVAL_MS): { stop(): Promise<void> } {
    void this.#trimmer?.stop();
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let running: Promise<unknown> = Promise.resolve();
    const tick = () => {
      running = this.trimSerialLogs().finally(() => {
        if (!stopped) timer = setTimeout(tick, intervalMs);
      });
    };
    timer = setTimeout(tick, intervalMs);
    const cloudInit = this.#cloudInit.start();
    const nicAddresses = this.#nicAddresses.start();
    const handle = {
      stop: async () => {
        stopped = true;
        clearTimeout(timer);
        await running.catch(() => {});
        await cloudInit.stop();
        await nicAddresses.stop();
        if (this.#trimmer === handle) this.#trimmer = null;
      },
    };
    this.#trimmer = handle;
    return handle;
  }

  /**
   * Detaches from every VM for agent shutdown, leaving each QEMU running: stops the serial
   * log trimmer, aborts operations queued or in flight (a download is cancelled; a QEMU being
   * launched still comes up), lets QEMU stops already begun finish (a guest that powered
   * off), waits for state.json and cloud-init.json writes, then closes the QMP sessions.
   */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#trimmer?.stop();
    for (const set of this.#ops.values()) for (const c of set) c.abort(shuttingDown());
    const ops = [...this.#ops.keys()].map((id) =>
      this.#locks.run(id, () => Promise.resolve()).catch(() => {})
    );
    await Promise.allSettled([...ops, ...this.#background]);
    await Promise.allSettled([...this.#vms.values()].map((r) => r.persisting));
    await this.#cloudInit.flush(); // cloud-init.json (a deleted VM's entry goes last)
    for (const r of this.#vms.values()) r.qemu?.qmp.close();
    await this.#net.close();
  }
}

/** `{cloud_init}` for an observed VM, or nothing while it is not watched. */
function cloudInitOf(c: CloudInitCondition | undefined): { cloud_init?: CloudInitCondition } {
  return c ? { cloud_init: c } : {};
}

/** `{nic_addresses}` for an observed VM, or nothing when none was learnt. */
function nicAddressesOf(
  a: LearntNicAddress[] | undefined,
): { nic_addresses?: LearntNicAddress[] } {
  return a && a.length > 0 ? { nic_addresses: a } : {};
}

function shuttingDown(): ApiError {
  return new ApiError("task_cancelled", "the agent is shutting down");
}

async function readManifest(path: string): Promise<VmManifest | null> {
  try {
    const m = JSON.parse(await Deno.readTextFile(path));
    return typeof m?.name === "string" && typeof m?.image === "string" ? m as VmManifest : null;
  } catch {
    return null;
  }
}

function mib(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
