/**
 * QEMU processes that outlive the agent: the command line (a pure function), launching QEMU
 * as a daemon, finding a running QEMU again after an agent restart, and stopping it (QMP
 * `quit`, then SIGKILL through its pidfile).
 *
 * The mechanism (DESIGN.md "Facts": verified with QEMU 7.2):
 * - QEMU is launched with `-daemonize -pidfile <run>/vms/<id>/qemu.pid`: the launching
 *   process exits 0 once QEMU is initialised (errors before that still reach its stderr, so
 *   a failed start is `qemu_spawn_failed` with QEMU's own message), and QEMU is reparented to
 *   PID 1 in a session of its own. Stopping or killing the agent therefore never stops a VM
 *   (under systemd the unit must say `KillMode=process`, or stopping the unit kills the
 *   QEMUs in its cgroup).
 * - QEMU holds a `lockf` lock on its pidfile for its whole life and deletes the file on a
 *   clean exit. `pgrep -F <pidfile> -L` prints the pid only while the file is locked, and
 *   `pkill -KILL -F <pidfile> -L` kills only then, so a stale pidfile naming a recycled pid
 *   never reaches an unrelated process. The agent's sandbox has no `Deno.kill`; these two
 *   tools (and nothing more general) are on its run allowlist (scripts/permissions.ts).
 * - `-no-shutdown`: a guest that powers off leaves QEMU alive in status `shutdown` (QMP event
 *   `SHUTDOWN` with `guest: true`), so the agent decides what happens next (agent/vms.ts:
 *   `quit`, or `system_reset` + `cont` for a reboot).
 * - The QMP socket closes when QEMU exits; the agent keeps one session per running VM and
 *   takes its end as QEMU's exit.
 *
 * Errors are `qemu_spawn_failed` with the tail of QEMU's stderr (spec: troubleshooting
 * "Task error qemu_spawn_failed").
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

/** The tool that tells whether a pidfile is locked by a live process (procps-ng). */
export const PGREP = "pgrep";
/** The tool that kills the process holding a pidfile's lock (procps-ng). */
export const PKILL = "pkill";

/** Where a VM's files live. */
export interface VmFilePaths {
  /** `<state>/vms/<id>`: disk, seed, serial log, vm.json, state.json. */
  vmDir: string;
  /** `<run>/vms/<id>`: QMP and serial sockets, QEMU's pidfile. */
  sockDir: string;
  disk: string;
  seed: string;
  serialLog: string;
  serialSock: string;
  qmpSock: string;
  /** The QEMU guest agent's channel (`<run>/vms/<id>/qga.sock`). */
  qgaSock: string;
  /** `<run>/vms/<id>/qemu.pid`, locked by QEMU while it runs. */
  pidFile: string;
  vmJson: string;
  /** `<state>/vms/<id>/state.json`: whether QEMU should be running, and its last exit. */
  stateJson: string;
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
    qgaSock: join(sockDir, "qga.sock"),
    pidFile: join(sockDir, "qemu.pid"),
    vmJson: join(vmDir, "vm.json"),
    stateJson: join(vmDir, "state.json"),
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
  /** Start with the vCPUs halted (`-S`; QMP status `prelaunch` until `cont`). */
  paused?: boolean;
  /**
   * NICs on networks, index order: each a TAP the agent created (agent/net/) and its MAC.
   * Empty or absent: one user-mode NAT NIC.
   */
  nics?: QemuNic[];
  /** Extra arguments appended verbatim (tests use it to provoke failures). */
  extraArgs?: string[];
}

/** A NIC on a network: the persistent TAP QEMU attaches to and the guest's MAC. */
export interface QemuNic {
  tap: string;
  mac: string;
}

/**
 * The NIC arguments: per NIC `-netdev tap,id=net<i>,ifname=<tap>,script=no,downscript=no
 * -device virtio-net-pci,netdev=net<i>,mac=<mac>`; without NICs `-nic
 * user,model=virtio-net-pci` (QEMU user-mode NAT).
 */
export function nicArgs(nics: QemuNic[] | undefined): string[] {
  if (!nics?.length) return ["-nic", "user,model=virtio-net-pci"];
  return nics.flatMap((n, i) => [
    "-netdev",
    `tap,id=net${i},ifname=${qemuEscape(n.tap)},script=no,downscript=no`,
    "-device",
    `virtio-net-pci,netdev=net${i},mac=${qemuEscape(n.mac)}`,
  ]);
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
 * -chardev socket,id=qga0,path=<qga.sock>,server=on,wait=off -device virtio-serial-pci
 * -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
 * -nic user,model=virtio-net-pci        (or the TAP NICs of {@link nicArgs})
 * -no-shutdown -daemonize -pidfile <qemu.pid> [-S]
 * ```
 *
 * arm64 uses `-machine virt,gic-version=max,accel=…`, the seed as a read-only virtio disk
 * (the virt machine has no IDE) and `-bios <firmwareArm64>` when set. A VM without networks
 * has one user-mode networking NIC (slirp); one on networks has a virtio NIC per TAP.
 *
 * `logappend=on` makes QEMU open the serial log with `O_APPEND`: it is kept across QEMU
 * restarts of the VM, and QEMU keeps writing at its end after the agent truncates it (see
 * agent/serial_log.ts). `-no-shutdown`, `-daemonize` and `-pidfile`: see the module doc.
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
    // The QEMU guest agent's channel (guests running qemu-ga report their addresses).
    "-chardev",
    `socket,id=qga0,path=${qemuEscape(f.qgaSock)},server=on,wait=off`,
    "-device",
    "virtio-serial-pci,id=vser0",
    "-device",
    "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    ...nicArgs(spec.nics),
    "-no-shutdown",
    "-daemonize",
    "-pidfile",
    f.pidFile,
    ...(spec.paused ? ["-S"] : []),
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

/** A running (daemonized) QEMU and the agent's QMP session with it. */
export interface QemuInstance {
  pid: number;
  /** Its pidfile (locked by QEMU while it lives). */
  pidFile: string;
  /** The session; its `closed` resolving (not locally) means QEMU exited. */
  qmp: QmpClient;
}

/** A QEMU found or launched, with its QMP run status (`running`, `prelaunch`, `paused`, …). */
export interface QemuWithStatus extends QemuInstance {
  status: string;
}

/** Options of {@link launchQemu}. */
export interface LaunchQemuOptions {
  /** Emulator binary (looked up on PATH; must be in the sandbox's run allowlist). */
  binary: string;
  /** The full argv from {@link buildQemuArgs} (with `-daemonize -pidfile`). */
  args: string[];
  pidFile: string;
  qmpSock: string;
  /** How long QEMU may take to initialise and answer QMP, ms. */
  startTimeoutMs: number;
  /** Called once the launcher has exited 0 and the pidfile names QEMU (timings `spawn`). */
  onSpawned?: (pid: number) => void;
}

const STDERR_TAIL_BYTES = 8 * 1024;

/** Formats an exit status: `exit code 1` / `signal SIGKILL`. */
export function describeStatus(s: Deno.CommandStatus): string {
  return s.signal ? `signal ${s.signal}` : `exit code ${s.code}`;
}

/**
 * Launches QEMU as a daemon and connects to its QMP socket: runs the launcher, waits for it
 * to exit 0 (QEMU initialised, reparented to PID 1), reads the pidfile, negotiates QMP and
 * reads `query-status`.
 *
 * @throws ApiError `qemu_spawn_failed` when the binary cannot be run, the launcher exits
 *   non-zero (message: `qemu exited during startup (exit code N): <stderr tail>`), or
 *   QEMU does not initialise / answer QMP within `startTimeoutMs` (any QEMU that did start is
 *   killed through its pidfile first)
 */
export async function launchQemu(o: LaunchQemuOptions): Promise<QemuWithStatus> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(o.binary, {
      args: o.args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new ApiError("qemu_spawn_failed", `cannot spawn ${o.binary}: ${(e as Error).message}`);
  }
  const tail = new RingBuffer(STDERR_TAIL_BYTES);
  // The daemon keeps the pipe open until it redirects its stdio to /dev/null.
  const stderrDone = (async () => {
    try {
      for await (const chunk of child.stderr) tail.push(chunk);
    } catch {
      // stream closed
    }
  })();
  const deadline = Date.now() + o.startTimeoutMs;
  const fail = async (why: string): Promise<never> => {
    await killQemu(o.pidFile).catch(() => false);
    const err = tail.text().trim();
    throw new ApiError("qemu_spawn_failed", `qemu ${why}${err ? `: ${err}` : ""}`);
  };
  let status: Deno.CommandStatus;
  try {
    status = await withTimeout(child.status, o.startTimeoutMs, "qemu start");
  } catch {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    return await fail(`did not initialise within ${o.startTimeoutMs} ms`);
  }
  await withTimeout(stderrDone, 2000, "stderr drain").catch(() => {});
  if (!status.success) {
    return await fail(`exited during startup (${describeStatus(status)})`);
  }
  const pid = await lockedPid(o.pidFile);
  if (pid === null) return await fail("exited right after starting (its pidfile is not locked)");
  o.onSpawned?.(pid);
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(o.qmpSock, deadline);
  } catch (e) {
    return await fail(`did not answer on its QMP socket: ${(e as Error).message}`);
  }
  try {
    const st = await withTimeout(
      qmp.execute("query-status"),
      Math.max(1, deadline - Date.now()),
      "query-status",
    ) as { status?: string };
    return { pid, pidFile: o.pidFile, qmp, status: String(st?.status) };
  } catch (e) {
    qmp.close();
    return await fail(`query-status failed: ${(e as Error).message}`);
  }
}

/**
 * The pid of the live process holding `pidFile`'s lock (`pgrep -F <pidFile> -L`), or null
 * when the file is missing, unlocked (stale: its QEMU died) or invalid.
 *
 * @throws Error when `pgrep` cannot be run
 */
export async function lockedPid(pidFile: string): Promise<number | null> {
  const out = await new Deno.Command(PGREP, {
    args: ["-F", pidFile, "-L"],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!out.success) return null;
  const pid = Number(new TextDecoder().decode(out.stdout).trim().split(/\s+/)[0]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/**
 * SIGKILLs the process holding `pidFile`'s lock (`pkill -KILL -F <pidFile> -L`); never a
 * process named by a stale pidfile.
 *
 * @returns true when a process was signalled
 * @throws Error when `pkill` cannot be run
 */
export async function killQemu(pidFile: string): Promise<boolean> {
  const out = await new Deno.Command(PKILL, {
    args: ["-KILL", "-F", pidFile, "-L"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  return out.success;
}

/**
 * Finds the QEMU of a VM whose agent restarted: when `pidFile` is locked by a live process,
 * connects to `qmpSock` (until `deadline`, ms since the epoch) and reads `query-status`.
 *
 * @returns null when no QEMU holds the pidfile (missing or stale)
 * @throws Error when QEMU lives but its QMP socket does not answer by the deadline
 */
export async function adoptQemu(
  pidFile: string,
  qmpSock: string,
  deadline: number,
): Promise<QemuWithStatus | null> {
  const pid = await lockedPid(pidFile);
  if (pid === null) return null;
  const qmp = await QmpClient.connect(qmpSock, deadline);
  try {
    const st = await withTimeout(
      qmp.execute("query-status"),
      Math.max(1, deadline - Date.now()),
      "query-status",
    ) as { status?: string };
    return { pid, pidFile, qmp, status: String(st?.status) };
  } catch (e) {
    qmp.close();
    throw e;
  }
}

/** How {@link stopQemu} ended QEMU. */
export type StopOutcome = "quit" | "killed" | "gone";

/**
 * Stops QEMU: QMP `quit`, then `pkill -KILL` when its QMP session has not closed `graceMs`
 * after the quit was sent (one window, however long the QMP reply takes), then waits up to
 * 10 s more for the session to close.
 *
 * @returns `quit` (exited on its own), `killed` (SIGKILL sent), `gone` (it had already exited)
 * @throws Error when QEMU is still alive after SIGKILL (the session never closed)
 */
export async function stopQemu(q: QemuInstance, graceMs = 10_000): Promise<StopOutcome> {
  if (q.qmp.closedLocally) throw new Error("stopQemu needs an open QMP session");
  const deadline = Date.now() + graceMs;
  const exited = q.qmp.closed;
  let outcome: StopOutcome = "quit";
  // The reply may be lost when QEMU exits first; the exit is what counts.
  const quit = q.qmp.execute("quit").catch(() => {});
  try {
    await withTimeout(Promise.all([quit, exited]), deadline - Date.now(), "quit");
  } catch {
    outcome = (await killQemu(q.pidFile)) ? "killed" : "gone";
    await withTimeout(exited, 10_000, `QEMU pid ${q.pid} exit after SIGKILL`);
  }
  return outcome;
}

/**
 * Kills a QEMU the agent has no QMP session with (SIGKILL through its pidfile) and waits up
 * to `waitMs` for its pidfile lock to be released.
 *
 * @returns the pid that was killed, or null when none held the pidfile
 * @throws Error when the process still holds the lock after `waitMs`
 */
export async function killOrphan(pidFile: string, waitMs = 10_000): Promise<number | null> {
  const pid = await lockedPid(pidFile);
  if (pid === null) return null;
  await killQemu(pidFile);
  const end = Date.now() + waitMs;
  while ((await lockedPid(pidFile)) !== null) {
    if (Date.now() > end) throw new Error(`QEMU pid ${pid} still alive after SIGKILL`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return pid;
}
