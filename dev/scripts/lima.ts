/**
 * The Lima side of the dev pipeline (spec 001 "Running Otherix on macOS for development"):
 * the macOS host's capabilities, `lima-ensure-one` (exactly one VM `otherix-dev` from
 * dev/lima/otherix-dev.yaml, running), the agent's cross-build, and the commands that reach
 * into the VM. Every `limactl`, `sysctl` and `sw_vers` call goes through PATH, so tests put
 * stand-ins there.
 *
 * Nested virtualization: `nestedVirtualization: true` hard-fails Lima on hosts without it, so
 * it is not in the template; {@link limaCreateArgs} adds `--set .nestedVirtualization=true` only
 * on Apple M3 or later with macOS 15 or later ({@link parseMacHost}).
 *
 * @module
 */
import { join } from "node:path";
import { DevError, must, run, say } from "./proc.ts";

/** The Lima VM's name. */
export const LIMA_VM = "otherix-dev";
/** The template, relative to the repository root. */
export const LIMA_TEMPLATE = "dev/lima/otherix-dev.yaml";

/** What the macOS host offers. */
export interface MacHost {
  /** CPU architecture (the Lima VM's, and the agent's build target). */
  arch: "arm64" | "amd64";
  /** `sysctl -n machdep.cpu.brand_string`, e.g. `Apple M3 Pro`. */
  chip: string;
  /** Apple silicon generation (M3 → 3); null on Intel. */
  chipGeneration: number | null;
  /** `sw_vers -productVersion`, e.g. `15.1.1`. */
  macosVersion: string;
  macosMajor: number;
  /** Nested virtualization: M3 or later AND macOS 15 or later. */
  nestedVirtualization: boolean;
}

/**
 * Interprets `sysctl -n machdep.cpu.brand_string`, `sysctl -n hw.optional.arm64` (`1` on Apple
 * silicon, also under Rosetta; null when the key is absent, as on Intel) and
 * `sw_vers -productVersion` (spec: "chip generation >= M3 and macOS major >= 15").
 *
 * @throws DevError when the macOS version is unreadable
 */
export function parseMacHost(brand: string, arm64: string | null, swVers: string): MacHost {
  const chip = brand.trim();
  const m = /^Apple M(\d+)\b/.exec(chip);
  const chipGeneration = m ? Number(m[1]) : null;
  const isArm = arm64?.trim() === "1" || chipGeneration !== null;
  const macosVersion = swVers.trim();
  const major = Number(/^(\d+)/.exec(macosVersion)?.[1]);
  if (!Number.isInteger(major)) {
    throw new DevError(`cannot read the macOS version from sw_vers: "${macosVersion}"`);
  }
  return {
    arch: isArm ? "arm64" : "amd64",
    chip,
    chipGeneration,
    macosVersion,
    macosMajor: major,
    nestedVirtualization: isArm && (chipGeneration ?? 0) >= 3 && major >= 15,
  };
}

/** Reads the host's facts with `sysctl` and `sw_vers`. */
export async function detectMacHost(): Promise<MacHost> {
  const brand = await must(["sysctl", "-n", "machdep.cpu.brand_string"], { capture: true });
  const arm = await run(["sysctl", "-n", "hw.optional.arm64"], { capture: true });
  const ver = await must(["sw_vers", "-productVersion"], { capture: true });
  return parseMacHost(brand.stdout, arm.code === 0 ? arm.stdout : null, ver.stdout);
}

/** One line about nested virtualization, as `lima-ensure-one` prints it. */
export function describeHost(h: MacHost): string {
  return h.nestedVirtualization
    ? `${h.chip}, macOS ${h.macosVersion}: nested virtualization available; creating the VM ` +
      `with --set .nestedVirtualization=true (KVM inside the VM)`
    : `${h.chip}, macOS ${h.macosVersion}: no nested virtualization (needs Apple M3 or later ` +
      `and macOS 15 or later); the agent runs VMs under TCG (slow but functional)`;
}

/** `limactl create` argv for the VM on host `h` (template path absolute). */
export function limaCreateArgs(h: MacHost, template: string): string[] {
  return [
    "limactl",
    "create",
    `--name=${LIMA_VM}`,
    "--tty=false",
    ...(h.nestedVirtualization ? ["--set", ".nestedVirtualization=true"] : []),
    template,
  ];
}

/** The VM's status from `limactl list --json` (`Running`, `Stopped`, …); null when absent. */
export async function limaStatus(): Promise<string | null> {
  const res = await must(["limactl", "list", "--json"], { capture: true });
  for (const line of res.stdout.split("\n")) {
    if (!line.trim()) continue;
    let inst: { name?: string; status?: string };
    try {
      inst = JSON.parse(line);
    } catch {
      throw new DevError(`limactl list --json printed a line that is not JSON: ${line}`);
    }
    if (inst.name === LIMA_VM) return inst.status ?? "Unknown";
  }
  return null;
}

/**
 * `lima-ensure-one`: creates the VM from the template when absent (with nested
 * virtualization where the host has it), starts it when stopped.
 *
 * @throws DevError when the VM is in another state (e.g. `Broken`) or limactl fails
 */
export async function ensureLimaVm(repo: string, target: string): Promise<MacHost> {
  const host = await detectMacHost();
  say(target, describeHost(host));
  const status = await limaStatus();
  if (status === null) {
    say(target, `creating Lima VM ${LIMA_VM} (Ubuntu 24.04, ${host.arch}) from ${LIMA_TEMPLATE}`);
    await must(limaCreateArgs(host, join(repo, LIMA_TEMPLATE)));
    await must(["limactl", "start", "--tty=false", LIMA_VM]);
  } else if (status === "Stopped") {
    say(target, `starting Lima VM ${LIMA_VM}`);
    await must(["limactl", "start", "--tty=false", LIMA_VM]);
  } else if (status === "Running") {
    say(target, `Lima VM ${LIMA_VM} is running`);
  } else {
    throw new DevError(
      `Lima VM ${LIMA_VM} is ${status}: run \`make clean-dev\` (limactl delete ${LIMA_VM}) and ` +
        `\`make bootstrap-dev\` again`,
    );
  }
  return host;
}

/** argv running `args` as root inside the VM. */
export function limaSudo(...args: string[]): string[] {
  return ["limactl", "shell", LIMA_VM, "sudo", ...args];
}

/** The `deno compile` target triple of the Lima VM for host arch `arch`. */
export function linuxTarget(arch: MacHost["arch"]): string {
  return arch === "arm64" ? "aarch64-unknown-linux-gnu" : "x86_64-unknown-linux-gnu";
}
