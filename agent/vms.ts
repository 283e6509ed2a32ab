/**
 * The VMs this agent hosts: create (image → disk → seed → QEMU), delete, observe, console log.
 *
 * Files per VM (DESIGN.md "Agent files"): `<state>/vms/<id>/{disk.qcow2, seed.iso,
 * serial.log, vm.json}` and `<run>/vms/<id>/{qmp.sock, serial.sock}`. `vm.json` (the create
 * request plus the resolved image and accelerator, for operators) is written once disk and
 * seed are complete, so its presence marks a fully prepared VM.
 *
 * Idempotency (shared/api/agent.ts): a create for a VM whose QEMU runs succeeds at once; a
 * create for a prepared but stopped VM (e.g. after an agent restart) starts QEMU on the
 * existing disk; a delete of an unknown id succeeds after removing any leftover files.
 * Operations on one VM id are serialized.
 *
 * Serial logs: {@link VmManager.startSerialLogTrimmer} caps every known VM's `serial.log` at
 * `qemu.serial_log_max_bytes` (agent/serial_log.ts); the `console-log` endpoint reads the
 * tail of the current file.
 *
 * Shutdown: the agent stops its QEMU children (QMP `quit`) when it exits, and on start it
 * quits any QEMU left over from a crashed agent, so no orphan survives the agent; VMs are
 * then reported `stopped` until the control plane re-creates them.
 *
 * @module
 */
import { ApiError } from "../shared/errors.ts";
import type { Architecture } from "../shared/api/common.ts";
import type { ObservedVm, VmPhase } from "../shared/api/nodes.ts";
import type { AgentVmCreateRequest } from "../shared/api/agent.ts";
import type { Logger } from "../shared/log.ts";
import type { AgentConfig, AgentPaths } from "./config.ts";
import type { Accelerator } from "./accel.ts";
import { buildSeedIso } from "./cloudinit.ts";
import { createOverlay, imageInfo } from "./disks.ts";
import {
  errorMessage,
  exists,
  isWithin,
  mkdirBeneath,
  removeAll,
  writeFileAtomic,
} from "./fsutil.ts";
import { join } from "node:path";
import { imageBasename, type ImageCache } from "./images.ts";
import { KeyedMutex } from "./lock.ts";
import { QmpClient } from "./qmp.ts";
import { SERIAL_LOG_CHECK_INTERVAL_MS, trimSerialLog } from "./serial_log.ts";
import {
  buildQemuArgs,
  checkSocketPath,
  describeStatus,
  type QemuProcess,
  startQemu,
  stopQemu,
  type VmFilePaths,
  vmFilePaths,
} from "./qemu.ts";

/** `result` of a successful `vm.create` agent task. */
export interface VmCreateResult {
  phase: "running";
  accelerator: Accelerator;
  /** The cached image's basename. */
  image: string;
  image_cache_hit: boolean;
}

/** What `vm.json` holds. */
export interface VmManifest {
  id: string;
  name: string;
  architecture: Architecture;
  vcpus: number;
  memory_mb: number;
  disk_gib: number;
  image_url: string;
  image_sha256: string | null;
  image: string;
  pool: { name: string; path: string };
  user_data: string | null;
  accelerator: Accelerator;
  created_at: string;
}

interface VmRecord {
  id: string;
  name: string;
  phase: VmPhase;
  proc: QemuProcess | null;
  accelerator: Accelerator;
  image: string;
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
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** In-memory registry and lifecycle of the agent's VMs. */
export class VmManager {
  #vms = new Map<string, VmRecord>();
  #locks = new KeyedMutex();
  #o: VmManagerOptions;
  #closing = false;
  #starting = new Set<Promise<unknown>>();
  #trimmer: { stop(): Promise<void> } | null = null;

  constructor(opts: VmManagerOptions) {
    this.#o = opts;
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

  /** Observed VMs (heartbeats, `GET /v1/vms`), sorted by name. */
  list(): ObservedVm[] {
    return [...this.#vms.values()]
      .map((r) => this.get(r.id)!)
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  }

  /** The observed VM `id`, if known. */
  get(id: string): ObservedVm | undefined {
    const r = this.#vms.get(id);
    return r && { id: r.id, name: r.name, phase: r.phase, pid: r.proc?.pid ?? null };
  }

  /**
   * Startup recovery: creates the VM directories, quits QEMUs left by a previous agent
   * process (their QMP socket still answers), registers prepared VMs (`vm.json`) as
   * `stopped`, and removes half-created VM directories and stale socket directories.
   */
  async recover(): Promise<void> {
    const { vmsDir, vmSocketsDir } = this.#o.paths;
    await Deno.mkdir(vmsDir, { recursive: true, mode: 0o750 });
    await Deno.mkdir(vmSocketsDir, { recursive: true, mode: 0o750 });
    for await (const e of Deno.readDir(vmSocketsDir)) {
      if (!UUID_RE.test(e.name)) continue;
      const files = this.files(e.name);
      if (await exists(files.qmpSock)) {
        try {
          const qmp = await QmpClient.connect(files.qmpSock, Date.now() + 2000, undefined, false);
          await qmp.execute("quit").catch(() => {});
          await Promise.race([qmp.closed, new Promise((r) => setTimeout(r, 10_000))]);
          qmp.close();
          this.#o.log.warn("vm: stopped QEMU left running by a previous agent process", {
            vm_id: e.name,
          });
        } catch {
          // Stale socket: nobody listens.
        }
      }
      await removeAll(files.sockDir);
    }
    for await (const e of Deno.readDir(vmsDir)) {
      if (!UUID_RE.test(e.name) || !e.isDirectory) continue;
      const files = this.files(e.name);
      const manifest = await readManifest(files.vmJson);
      if (manifest && await this.#isPrepared(files)) {
        this.#vms.set(e.name, {
          id: e.name,
          name: manifest.name,
          phase: "stopped",
          proc: null,
          accelerator: manifest.accelerator,
          image: manifest.image,
        });
      } else {
        this.#o.log.warn("vm: removing half-created VM directory", { vm_id: e.name });
        await removeAll(files.vmDir);
      }
    }
  }

  async #isPrepared(files: VmFilePaths): Promise<boolean> {
    return await exists(files.vmJson) && await exists(files.disk) && await exists(files.seed);
  }

  /**
   * Creates (or re-starts) VM `req.vm.id` and returns once QEMU reports `running`.
   *
   * @param progress receives human-readable progress strings
   * @throws ApiError `path_not_allowed` (pool path outside `<state>/pools`),
   *   `validation_failed` (image basename), `download_failed`, `checksum_mismatch`,
   *   `image_unavailable`, `vm_create_failed` (disk, seed, files), `qemu_spawn_failed`.
   *   A freshly created VM leaves no files behind on failure.
   */
  create(
    req: AgentVmCreateRequest,
    progress: (p: string) => void = () => {},
  ): Promise<VmCreateResult> {
    return this.#locks.run(req.vm.id, () => this.#create(req, progress));
  }

  async #create(req: AgentVmCreateRequest, progress: (p: string) => void): Promise<VmCreateResult> {
    const { vm, pool } = req;
    const log = this.#o.log.with({ vm_id: vm.id, vm: vm.name });
    const existing = this.#vms.get(vm.id);
    if (existing?.proc?.alive()) {
      return {
        phase: "running",
        accelerator: existing.accelerator,
        image: existing.image,
        image_cache_hit: true,
      };
    }
    if (!isWithin(this.#o.paths.poolsDir, pool.path)) {
      throw new ApiError(
        "path_not_allowed",
        `pool ${pool.name}: path ${pool.path} is not under the agent's pools directory ${this.#o.paths.poolsDir}`,
      );
    }
    const basename = imageBasename(vm.image_url);
    const files = this.files(vm.id);
    checkSocketPath(files.qmpSock);
    checkSocketPath(files.serialSock);
    const accelerator: Accelerator = vm.architecture === this.#o.hostArch
      ? this.#o.accelerator
      : "tcg";
    const binary = vm.architecture === "arm64"
      ? this.#o.qemu.binary_arm64
      : this.#o.qemu.binary_amd64;
    const prepared = await this.#isPrepared(files);
    const record: VmRecord = existing ?? {
      id: vm.id,
      name: vm.name,
      phase: "creating",
      proc: null,
      accelerator,
      image: basename,
    };
    record.phase = "creating";
    this.#vms.set(vm.id, record);
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
      const img = await this.#o.images.ensure({
        poolPath: pool.path,
        poolName: pool.name,
        url: vm.image_url,
        sha256: vm.image_sha256,
        onProgress: (n, total) =>
          progress(
            `downloading image (${mib(n)} MiB${total !== null ? ` of ${mib(total)} MiB` : ""})`,
          ),
      });
      log.info(img.cacheHit ? "image: cache hit" : "image: downloaded", {
        image: img.path,
        sha256: img.sha256,
        bytes: img.sizeBytes,
      });
      if (!prepared) {
        await removeAll(files.vmDir);
        await Deno.mkdir(files.vmDir, { recursive: true, mode: 0o750 });
        progress("creating disk");
        const info = await imageInfo(this.#o.qemu.qemu_img, img.path);
        await createOverlay(this.#o.qemu.qemu_img, img.path, info, files.disk, vm.disk_gib);
        progress("building cloud-init seed");
        await buildSeedIso({
          isoBuilder: this.#o.qemu.iso_builder,
          vmId: vm.id,
          hostname: vm.name,
          userData: vm.user_data,
          output: files.seed,
        });
        const manifest: VmManifest = {
          id: vm.id,
          name: vm.name,
          architecture: vm.architecture,
          vcpus: vm.vcpus,
          memory_mb: vm.memory_mb,
          disk_gib: vm.disk_gib,
          image_url: vm.image_url,
          image_sha256: vm.image_sha256 ?? null,
          image: basename,
          pool,
          user_data: vm.user_data ?? null,
          accelerator,
          created_at: new Date().toISOString(),
        };
        await writeFileAtomic(files.vmJson, JSON.stringify(manifest, null, 2) + "\n", 0o640);
      }
      await removeAll(files.sockDir);
      await Deno.mkdir(files.sockDir, { recursive: true, mode: 0o750 });
      const args = buildQemuArgs({
        name: vm.name,
        architecture: vm.architecture,
        accelerator,
        vcpus: vm.vcpus,
        memoryMb: vm.memory_mb,
        files,
        firmwareArm64: this.#o.firmwareArm64 ?? null,
        extraArgs: this.#o.extraQemuArgs,
      });
      if (this.#closing) throw new ApiError("vm_create_failed", "the agent is shutting down");
      progress(`starting qemu (${accelerator})`);
      log.info(`qemu: starting (${accelerator})`, { argv: [binary, ...args].join(" ") });
      const started = Date.now();
      const starting = (async () => {
        const proc = await startQemu({
          binary,
          args,
          qmpSock: files.qmpSock,
          startTimeoutMs: this.#o.qemu.start_timeout_seconds * 1000,
          cwd: files.vmDir,
        });
        if (this.#closing) {
          // shutdown() began while QEMU was starting: do not leave it behind.
          await stopQemu(proc, this.#graceMs);
          throw new ApiError("vm_create_failed", "the agent is shutting down");
        }
        return proc;
      })();
      this.#starting.add(starting);
      const proc = await starting.finally(() => this.#starting.delete(starting));
      log.info("qemu: running", { pid: proc.pid, ms: Date.now() - started });
      record.proc = proc;
      record.phase = "running";
      record.accelerator = accelerator;
      record.image = basename;
      this.#watch(record, proc);
      return { phase: "running", accelerator, image: basename, image_cache_hit: img.cacheHit };
    } catch (e) {
      log.warn("vm: create failed", { err: errorMessage(e) });
      await removeAll(files.sockDir).catch(() => {});
      if (prepared) {
        // Keep the existing disk (the guest's data); the VM stays known as failed.
        record.phase = "failed";
      } else {
        await removeAll(files.vmDir).catch((err) =>
          log.error("vm: cannot clean up VM directory", { err: errorMessage(err) })
        );
        if (existing) record.phase = "failed";
        else this.#vms.delete(vm.id);
      }
      throw e;
    }
  }

  #watch(record: VmRecord, proc: QemuProcess): void {
    proc.status.then((s) => {
      if (record.proc !== proc) return;
      record.proc = null;
      if (record.phase === "deleting") return;
      record.phase = s.success ? "stopped" : "failed";
      if (this.#closing) return; // shutdown() logs the stop itself
      const fields = { vm_id: record.id, vm: record.name, status: describeStatus(s) };
      if (s.success) this.#o.log.info("qemu: exited (guest powered off)", fields);
      else this.#o.log.warn("qemu: died", { ...fields, stderr: proc.stderrTail() });
    });
  }

  /**
   * Deletes VM `id`: stops QEMU (QMP `quit`, SIGKILL after the grace period) and removes its
   * state and socket directories. Unknown ids succeed (idempotent).
   *
   * @throws ApiError `validation_failed` when `id` is not a UUID; `vm_delete_failed` when
   *   files cannot be removed
   */
  delete(id: string, progress: (p: string) => void = () => {}): Promise<void> {
    return this.#locks.run(id, async () => {
      const record = this.#vms.get(id);
      const files = this.files(id);
      if (record) record.phase = "deleting";
      try {
        if (record?.proc) {
          progress("stopping qemu");
          const s = await stopQemu(record.proc, this.#graceMs);
          this.#o.log.info("qemu: stopped", { vm_id: id, status: describeStatus(s) });
          record.proc = null;
        }
        progress("removing files");
        await removeAll(files.vmDir);
        await removeAll(files.sockDir);
      } catch (e) {
        if (record) record.phase = "failed";
        throw new ApiError("vm_delete_failed", `delete vm ${id}: ${errorMessage(e)}`);
      }
      this.#vms.delete(id);
    });
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
   * or {@link shutdown}. Starting it again replaces the running loop.
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
    const handle = {
      stop: async () => {
        stopped = true;
        clearTimeout(timer);
        await running.catch(() => {});
        if (this.#trimmer === handle) this.#trimmer = null;
      },
    };
    this.#trimmer = handle;
    return handle;
  }

  /**
   * Stops the serial log trimmer and every running QEMU (QMP `quit`, then SIGKILL); files
   * are kept. Creates still in progress do not start QEMU any more (a QEMU that is starting
   * is stopped once up).
   */
  async shutdown(): Promise<void> {
    this.#closing = true;
    await this.#trimmer?.stop();
    await Promise.allSettled([...this.#starting]);
    await Promise.all([...this.#vms.values()].map(async (r) => {
      if (!r.proc) return;
      const s = await stopQemu(r.proc, this.#graceMs);
      this.#o.log.info("qemu: stopped for agent shutdown", {
        vm_id: r.id,
        status: describeStatus(s),
      });
    }));
  }
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
