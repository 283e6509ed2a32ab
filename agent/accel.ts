/**
 * Accelerator detection: KVM when it is usable, otherwise TCG software emulation
 * (DESIGN.md "Facts": a PVM-only nested KVM hangs stock kernels; spec: troubleshooting
 * `qemu_spawn_failed`, developer guide "Nested KVM and CPU choice").
 *
 * The decision is a pure function of a {@link HostProbe}, so tests inject fake hosts.
 *
 * @module
 */

/** A guest accelerator. */
export type Accelerator = "kvm" | "tcg";
/** The configured mode (`qemu.accelerator`). */
export type AcceleratorMode = "auto" | Accelerator;

/** What the detection needs to know about the host. */
export interface HostProbe {
  /** `Deno.build.arch` of the host (`x86_64` / `aarch64`). */
  arch: string;
  /** True when `path` exists (any file type); an undecidable probe counts as exists. */
  exists(path: string): Promise<boolean>;
  /**
   * `null` when `path` opens read-write (or cannot be checked here: the functional
   * {@link HostProbe.kvmSmokeTest} decides then), else the reason it does not.
   */
  openReadWrite(path: string): Promise<string | null>;
  /**
   * Optional functional check: starts QEMU paused with KVM and the CPU model the agent uses;
   * `null` when that works, else QEMU's error.
   */
  kvmSmokeTest?(): Promise<string | null>;
}

/** The decision with a human-readable reason for the log. */
export interface AcceleratorDecision {
  accelerator: Accelerator;
  /** Why, e.g. `kvm unusable: /dev/kvm is PVM-only nested KVM (/sys/module/kvm_pvm)`. */
  reason: string;
  /** For forced `kvm`: why auto-detection would have refused it (else null). */
  warning: string | null;
}

/** The KVM device. */
export const KVM_DEVICE = "/dev/kvm";

/**
 * Why KVM is unusable on this host, or `null` when it is usable.
 *
 * KVM is usable iff `/dev/kvm` exists and opens read-write, `/sys/module/kvm_pvm` does not
 * exist (PVM-only nested KVM runs only specially built guest kernels), a hardware KVM
 * module (`kvm_intel` / `kvm_amd`) is loaded — on arm64 KVM is built in, so that check is
 * skipped — and, when the probe offers one, the QEMU smoke test passes.
 */
export async function kvmUnusableReason(probe: HostProbe): Promise<string | null> {
  if (!(await probe.exists(KVM_DEVICE))) return `${KVM_DEVICE} does not exist`;
  const openError = await probe.openReadWrite(KVM_DEVICE);
  if (openError !== null) return `cannot open ${KVM_DEVICE} read-write: ${openError}`;
  if (await probe.exists("/sys/module/kvm_pvm")) {
    return `${KVM_DEVICE} is PVM-only nested KVM (/sys/module/kvm_pvm)`;
  }
  if (probe.arch !== "aarch64") {
    const vendor = await probe.exists("/sys/module/kvm_intel") ||
      await probe.exists("/sys/module/kvm_amd");
    if (!vendor) return "neither kvm_intel nor kvm_amd is loaded";
  }
  if (probe.kvmSmokeTest) {
    const err = await probe.kvmSmokeTest();
    if (err !== null) return `qemu cannot start a KVM guest: ${err}`;
  }
  return null;
}

/**
 * Decides the accelerator for `mode`: `auto` detects (see {@link kvmUnusableReason});
 * `kvm` and `tcg` are forced (a forced `kvm` on an unusable host carries a `warning`).
 */
export async function detectAccelerator(
  mode: AcceleratorMode,
  probe: HostProbe,
): Promise<AcceleratorDecision> {
  if (mode === "tcg") {
    return { accelerator: "tcg", reason: "forced by qemu.accelerator", warning: null };
  }
  const unusable = await kvmUnusableReason(probe);
  if (mode === "kvm") {
    return {
      accelerator: "kvm",
      reason: "forced by qemu.accelerator",
      warning: unusable ? `kvm may not work: ${unusable}` : null,
    };
  }
  if (unusable === null) return { accelerator: "kvm", reason: "kvm usable", warning: null };
  return { accelerator: "tcg", reason: `kvm unusable: ${unusable}`, warning: null };
}

/** Options of {@link realHostProbe}. */
export interface RealProbeOptions {
  /** The emulator for the host's architecture (smoke test). */
  qemuBinary: string;
  /** `qemu-img` (existence fallback inside the sandbox). */
  qemuImg: string;
  /** Smoke-test timeout, ms (default 15 000). */
  timeoutMs?: number;
}

/**
 * The real host. Deno refuses `/dev/*` and `/sys/*` to anything but `--allow-all`, even when
 * `--allow-read` names them, so inside the agent's sandbox file probes raise `NotCapable`.
 * Then existence is asked of `qemu-img info` (an allowed child, outside Deno's permission
 * checks: "No such file or directory" means absent), and whether `/dev/kvm` works is left
 * to the QEMU smoke test.
 */
export function realHostProbe(opts: RealProbeOptions): HostProbe {
  return {
    arch: Deno.build.arch,
    async exists(path) {
      try {
        await Deno.stat(path);
        return true;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return false;
        if (e instanceof Deno.errors.NotCapable) return await existsViaQemuImg(opts.qemuImg, path);
        // Anything else (e.g. EACCES): assume it exists, so kvm_pvm is never missed.
        return true;
      }
    },
    async openReadWrite(path) {
      try {
        (await Deno.open(path, { read: true, write: true })).close();
        return null;
      } catch (e) {
        if (e instanceof Deno.errors.NotCapable) return null; // the smoke test decides
        return (e as Error).message;
      }
    },
    kvmSmokeTest: () => kvmSmokeTest(opts.qemuBinary, Deno.build.arch, opts.timeoutMs ?? 15_000),
  };
}

/**
 * Existence of `path` as `qemu-img info` sees it: success or any error other than
 * "No such file or directory" means it exists (a directory is "not a regular file").
 */
export async function existsViaQemuImg(qemuImg: string, path: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(qemuImg, {
      args: ["info", "--force-share", "--output=json", path],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    if (out.success) return true;
    return !new TextDecoder().decode(out.stderr).includes("No such file or directory");
  } catch {
    return true;
  }
}

/**
 * Starts `qemuBinary` paused with KVM and `-cpu host` (`q35` on x86_64, `virt` on aarch64),
 * asks `query-kvm` over QMP on stdio, and quits. Returns `null` when KVM is enabled, else
 * the last lines of QEMU's stderr (e.g. `failed to set MSR 0x10a` on a PVM-only KVM).
 */
export async function kvmSmokeTest(
  qemuBinary: string,
  arch: string,
  timeoutMs: number,
): Promise<string | null> {
  const machine = arch === "aarch64" ? "virt,gic-version=max,accel=kvm" : "q35,accel=kvm";
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(qemuBinary, {
      args: [
        "-machine",
        machine,
        "-cpu",
        "host",
        "-m",
        "64",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    return `cannot run ${qemuBinary}: ${(e as Error).message}`;
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }, timeoutMs);
  try {
    const writer = child.stdin.getWriter();
    await writer.write(
      new TextEncoder().encode(
        '{"execute":"qmp_capabilities"}\n{"execute":"query-kvm"}\n{"execute":"quit"}\n',
      ),
    ).catch(() => {});
    await writer.close().catch(() => {});
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr).trim();
    const enabled = /"enabled":\s*true/.test(stdout);
    if (out.success && enabled) return null;
    const why = stderr.split("\n").filter(Boolean).slice(-2).join("; ");
    if (why) return why;
    return out.signal ? `qemu killed by ${out.signal}` : `qemu exit code ${out.code}`;
  } finally {
    clearTimeout(timer);
  }
}

/** The log line of a decision: `accelerator: tcg (kvm unusable: …)`. */
export function describeDecision(d: AcceleratorDecision): string {
  return `accelerator: ${d.accelerator} (${d.reason})`;
}
