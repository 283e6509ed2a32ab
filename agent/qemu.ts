/**
 * QEMU processes: the command line (a pure function), spawning QEMU as a child process,
 * waiting for it to report `running` over QMP, and stopping it (QMP `quit`, then SIGKILL).
 *
 * QEMU stays a child of the agent (the sandbox has no `Deno.kill`): it is stopped through
 * QMP or `ChildProcess.kill`. Errors are `qemu_spawn_failed` with the tail of QEMU's stderr
 * (spec: troubleshooting "Task error qemu_spawn_failed").
 *
 * @module
 */
import { join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import type { Architecture } from "../shared/api/common.ts";
import type { Accelerator } from "./accel.ts";
import { QmpClient, withTimeout } from "./qmp.ts";

/** Longest unix socket path (`sun_path` is 108 bytes including the terminating NUL). */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

/** Where a VM's files live. */
export interface VmFilePaths {
  /** `<state>/vms/<id>`: disk, seed, serial log, vm.json. */
  vmDir: string;
  /** `<run>/vms/<id>`: QMP and serial sockets. */
  sockDir: string;
  disk: string;
  seed: string;
  serialLog: string;
  serialSock: string;
  qmpSock: string;
  vmJson: string;
}

/** The files of VM `id` under the agent's `vmsDir` and `vmSocketsDir`. */
export function vmFilePaths(vmsDir: string, vmSocketsDir: string, id: string): VmFilePaths {
  const vmDir = join(vmsDir, id);
  const sockDir = join(vmSocketsDir, id);
  return {
    vmDir,
    sockDir,
    disk: join(vmDir, "disk.qcow2"),
    seed: join(vmDir, "seed.iso"),
    serialLog: join(vmDir, "serial.log"),
    serialSock: join(sockDir, "serial.sock"),
    qmpSock: join(sockDir, "qmp.sock"),
    vmJson: join(vmDir, "vm.json"),
  };
}

/**
 * Throws `vm_create_failed` when a unix socket path does not fit in `sun_path`
 * (more than {@link MAX_UNIX_SOCKET_PATH_BYTES} bytes).
 */
export function checkSocketPath(path: string): void {
  const len = new TextEncoder().encode(path).length;
  if (len > MAX_UNIX_SOCKET_PATH_BYTES) {
    throw new ApiError(
      "vm_create_failed",
      `unix socket path too long (${len} bytes, max ${MAX_UNIX_SOCKET_PATH_BYTES}): ${path}; ` +
        "use a shorter paths.run_dir",
    );
  }
}

/** Everything the command line depends on. */
export interface QemuSpec {
  /** VM name (a DNS label), shown as the QEMU guest name. */
  name: string;
  /** Guest architecture: `amd64` → q35 machine, `arm64` → virt machine. */
  architecture: Architecture;
  accelerator: Accelerator;
  vcpus: number;
  /** Guest memory, MiB. */
  memoryMb: number;
  files: VmFilePaths;
  /** UEFI firmware for arm64 guests (`-bios`); omitted when null. */
  firmwareArm64?: string | null;
  /** Extra arguments appended verbatim (tests use it to provoke failures). */
  extraArgs?: string[];
}

/** Escapes a QEMU option value (a `,` is written `,,`). */
export function qemuEscape(value: string): string {
  return value.replaceAll(",", ",,");
}

/**
 * QEMU's argv (without the binary) for `spec`. For amd64:
 *
 * ```
 * -name guest=<name> -machine q35,accel=<kvm|tcg> -cpu <host|max> -smp <vcpus> -m <MiB>
 * -nodefaults -no-user-config -display none -vga none
 * -drive file=<disk>,if=virtio,format=qcow2
 * -drive file=<seed>,media=cdrom,if=ide,format=raw,readonly=on
 * -chardev socket,id=serial0,path=<serial.sock>,server=on,wait=off,logfile=<serial.log>,logappend=on
 * -serial chardev:serial0 -qmp unix:<qmp.sock>,server=on,wait=off
 * -nic user,model=virtio-net-pci
 * ```
 *
 * arm64 uses `-machine virt,gic-version=max,accel=…`, the seed as a read-only virtio disk
 * (the virt machine has no IDE) and `-bios <firmwareArm64>` when set. The NIC is user-mode
 * networking (slirp) for now; bridged networking is a later iteration.
 *
 * `logappend=on` makes QEMU open the serial log with `O_APPEND`: it is kept across QEMU
 * restarts of the VM, and QEMU keeps writing at its end after the agent truncates it (see
 * agent/serial_log.ts).
 */
export function buildQemuArgs(spec: QemuSpec): string[] {
  const f = spec.files;
  const arm = spec.architecture === "arm64";
  const machine = arm
    ? `virt,gic-version=max,accel=${spec.accelerator}`
    : `q35,accel=${spec.accelerator}`;
  const seedDrive = arm
    ? `file=${qemuEscape(f.seed)},if=virtio,format=raw,readonly=on`
    : `file=${qemuEscape(f.seed)},media=cdrom,if=ide,format=raw,readonly=on`;
  return [
    "-name",
    `guest=${qemuEscape(spec.name)}`,
    "-machine",
    machine,
    "-cpu",
    spec.accelerator === "kvm" ? "host" : "max",
    "-smp",
    String(spec.vcpus),
    "-m",
    String(spec.memoryMb),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-vga",
    "none",
    ...(arm && spec.firmwareArm64 ? ["-bios", spec.firmwareArm64] : []),
    "-drive",
    `file=${qemuEscape(f.disk)},if=virtio,format=qcow2`,
    "-drive",
    seedDrive,
    "-chardev",
    `socket,id=serial0,path=${qemuEscape(f.serialSock)},server=on,wait=off,logfile=${
      qemuEscape(f.serialLog)
    },logappend=on`,
    "-serial",
    "chardev:serial0",
    "-qmp",
    `unix:${qemuEscape(f.qmpSock)},server=on,wait=off`,
    "-nic",
    "user,model=virtio-net-pci",
    ...(spec.extraArgs ?? []),
  ];
}

/** Keeps the last `capacity` bytes written to it. */
export class RingBuffer {
  #buf: Uint8Array;
  #len = 0;
  constructor(readonly capacity: number) {
    this.#buf = new Uint8Array(capacity);
  }
  /** Appends bytes, dropping the oldest beyond capacity. */
  push(data: Uint8Array): void {
    if (data.length >= this.capacity) {
      this.#buf.set(data.subarray(data.length - this.capacity));
      this.#len = this.capacity;
      return;
    }
    const keep = Math.min(this.#len, this.capacity - data.length);
    this.#buf.copyWithin(0, this.#len - keep, this.#len);
    this.#buf.set(data, keep);
    this.#len = keep + data.length;
  }
  /** The retained bytes as text. */
  text(): string {
    return new TextDecoder().decode(this.#buf.subarray(0, this.#len));
  }
}

/** A running QEMU child. */
export interface QemuProcess {
  pid: number;
  /** Resolves when QEMU exits. */
  status: Promise<Deno.CommandStatus>;
  /** The last bytes QEMU wrote to stderr. */
  stderrTail(): string;
  /** True until QEMU has exited. */
  alive(): boolean;
  /** The QMP session (null if it was closed). */
  qmp: QmpClient | null;
  /** Kills QEMU with SIGKILL (no-op once exited). */
  kill(): void;
}

/** Options of {@link startQemu}. */
export interface StartQemuOptions {
  /** Emulator binary (looked up on PATH; must be in the sandbox's run allowlist). */
  binary: string;
  args: string[];
  qmpSock: string;
  /** How long QEMU may take to report `running`, ms. */
  startTimeoutMs: number;
  /** Working directory of the child. */
  cwd?: string;
}

const STDERR_TAIL_BYTES = 8 * 1024;

/** Formats an exit status: `exit code 1` / `signal SIGKILL`. */
export function describeStatus(s: Deno.CommandStatus): string {
  return s.signal ? `signal ${s.signal}` : `exit code ${s.code}`;
}

/**
 * Spawns QEMU and waits until QMP reports `running`.
 *
 * @throws ApiError `qemu_spawn_failed` when QEMU cannot be spawned, exits early, or does not
 *   report `running` within the timeout (QEMU is then killed); the message carries the tail
 *   of QEMU's stderr
 */
export async function startQemu(opts: StartQemuOptions): Promise<QemuProcess> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(opts.binary, {
      args: opts.args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      cwd: opts.cwd,
    }).spawn();
  } catch (e) {
    throw new ApiError("qemu_spawn_failed", `cannot spawn ${opts.binary}: ${(e as Error).message}`);
  }
  const tail = new RingBuffer(STDERR_TAIL_BYTES);
  const stderrDone = (async () => {
    try {
      for await (const chunk of child.stderr) tail.push(chunk);
    } catch {
      // stream closed
    }
  })();
  const state: { exited: Deno.CommandStatus | null } = { exited: null };
  const status = child.status.then(async (s) => {
    state.exited = s;
    await withTimeout(stderrDone, 2000, "stderr drain").catch(() => {});
    return s;
  });
  const proc: QemuProcess = {
    pid: child.pid,
    status,
    stderrTail: () => tail.text().trim(),
    alive: () => state.exited === null,
    qmp: null,
    kill: () => {
      if (state.exited !== null) return;
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    },
  };
  const fail = async (why: string): Promise<never> => {
    proc.qmp?.close();
    proc.kill();
    const s = await status;
    const err = proc.stderrTail();
    throw new ApiError(
      "qemu_spawn_failed",
      `qemu ${why} (${describeStatus(s)})${err ? `: ${err}` : ""}`,
    );
  };
  // After a QMP failure, give an exiting QEMU a moment so the error names the exit.
  const exitedSoon = async () => {
    await withTimeout(status, 1000, "exit").catch(() => {});
    return state.exited !== null;
  };
  const deadline = Date.now() + opts.startTimeoutMs;
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(
      opts.qmpSock,
      deadline,
      () => (state.exited ? "exited" : null),
    );
    proc.qmp = qmp;
  } catch (e) {
    if (await exitedSoon()) return await fail("exited during startup");
    return await fail(`did not open its QMP socket: ${(e as Error).message}`);
  }
  while (true) {
    let running = false;
    try {
      const st = await withTimeout(
        qmp.execute("query-status"),
        Math.max(1, deadline - Date.now()),
        "query-status",
      ) as { status?: string };
      running = st?.status === "running";
    } catch (e) {
      if (await exitedSoon()) return await fail("exited during startup");
      return await fail(`query-status failed: ${(e as Error).message}`);
    }
    if (running) return proc;
    if (Date.now() > deadline) {
      return await fail(`did not report running within ${opts.startTimeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Stops QEMU: QMP `quit`, then SIGKILL when QEMU has not exited `graceMs` after the quit was
 * sent (one window, however long the QMP reply takes). Resolves with the exit status.
 */
export async function stopQemu(proc: QemuProcess, graceMs = 10_000): Promise<Deno.CommandStatus> {
  const deadline = Date.now() + graceMs;
  if (proc.alive() && proc.qmp) {
    // The reply may be lost when QEMU exits first; the exit is what counts.
    await withTimeout(proc.qmp.execute("quit"), graceMs, "quit").catch(() => {});
  }
  try {
    return await withTimeout(proc.status, deadline - Date.now(), "qemu exit");
  } catch {
    proc.kill();
    return await proc.status;
  } finally {
    proc.qmp?.close();
  }
}
