/**
 * The VM lifecycle verbs on the agent (`POST /v1/vms/{id}/actions`, shared/api/agent.ts; QMP
 * semantics from shared/api/tasks.ts `VmActionSchema`):
 *
 * - `start` (from stopped): launch QEMU on the existing disk and seed (`-S` when `paused`)
 *   → running (paused);
 * - `stop` (running, paused): `system_powerdown`; when the guest has shut down, or after
 *   `timeout_seconds`, `quit` (SIGKILL after a grace) → stopped;
 * - `poweroff` (running, paused): `quit` (SIGKILL after a grace) → stopped;
 * - `reboot` (running, paused): `system_powerdown`; when the guest has shut down
 *   `system_reset` + `cont`; after `timeout_seconds` `system_reset` at once → running;
 * - `pause` (running): `stop` → paused;
 * - `resume` (paused): `cont` → running;
 * - `reset` (running, paused): `system_reset` → phase unchanged.
 *
 * A guest cannot see the ACPI power button while its vCPUs are halted, so `stop` and `reboot`
 * of a paused VM resume it (`cont`) first. While a verb runs the phase is `starting` (start)
 * or `stopping` (stop, poweroff). An exit the agent caused is recorded as `requested`.
 *
 * Any other phase is refused with ApiError `vm_invalid_state` (`details: {phase}`): at once
 * over HTTP when the phase is settled ({@link checkActionPhase} with `settledOnly`), and again
 * when the verb gets its turn (operations on one VM are serialized by agent/vms.ts).
 *
 * @module
 */
import { ApiError } from "../shared/errors.ts";
import type { AgentTaskResult, AgentVmActionRequest } from "../shared/api/agent.ts";
import type { VmAction } from "../shared/api/tasks.ts";
import type { VmPhase } from "../shared/api/vm_runtime.ts";
import { DEFAULT_STOP_TIMEOUT_SECONDS } from "../shared/constants.ts";
import type { Accelerator } from "./accel.ts";
import type { QmpClient } from "./qmp.ts";

/** The phases each verb may start from. */
export const ALLOWED_PHASES: Readonly<Record<VmAction, readonly VmPhase[]>> = {
  start: ["stopped"],
  stop: ["running", "paused"],
  poweroff: ["running", "paused"],
  reboot: ["running", "paused"],
  pause: ["running"],
  resume: ["paused"],
  reset: ["running", "paused"],
};

/** Phases an operation in flight will leave: a verb queued behind it is judged afterwards. */
export const TRANSIENT_PHASES: readonly VmPhase[] = ["creating", "starting", "stopping"];

/**
 * Throws when `action` cannot run in `phase`.
 *
 * @param settledOnly true for the HTTP pre-check: a {@link TRANSIENT_PHASES} phase passes
 *   (the verb waits for the operation in flight and is judged then)
 * @throws ApiError `vm_invalid_state` with `details: {phase, action}`
 */
export function checkActionPhase(action: VmAction, phase: VmPhase, settledOnly = false): void {
  if (ALLOWED_PHASES[action].includes(phase)) return;
  if (settledOnly && TRANSIENT_PHASES.includes(phase)) return;
  throw new ApiError(
    "vm_invalid_state",
    `cannot ${action} a VM that is ${phase} (allowed: ${ALLOWED_PHASES[action].join(", ")})`,
    { phase, action },
  );
}

/** A guest shutdown claimed by a verb (see {@link VerbTarget.claimGuestShutdown}). */
export interface GuestShutdownClaim {
  /** Resolves when QEMU reports the guest powered off (`SHUTDOWN`, `guest: true`). */
  shutdown: Promise<void>;
  /** Gives the event back to the VM manager (which then quits QEMU on a guest shutdown). */
  release(): void;
}

/** What a verb may do to its VM (implemented by agent/vms.ts over one VM record). */
export interface VerbTarget {
  readonly id: string;
  /** The VM's current phase. */
  readonly phase: VmPhase;
  /** Sets (and announces) the phase. */
  setPhase(phase: VmPhase): void;
  /**
   * The QMP session of the VM's QEMU.
   *
   * @throws ApiError `vm_invalid_state` when no QEMU runs
   */
  qmp(): QmpClient;
  /** Resolves when the VM's current QEMU exits (at once when none runs). */
  exited(): Promise<void>;
  /**
   * Launches QEMU on the VM's disk and seed and sets the phase to `running` (`paused` with
   * `paused`); on failure the phase goes back to `stopped`.
   *
   * @throws ApiError `qemu_spawn_failed`
   */
  launch(paused: boolean): Promise<{ accelerator: Accelerator; phase: VmPhase }>;
  /**
   * Ends QEMU on the agent's behalf (`quit`, SIGKILL after the grace period); its exit is
   * recorded as `requested` with `detail`. Resolves once the exit has been recorded.
   */
  terminate(detail: string): Promise<void>;
  /** Takes the next guest shutdown away from the manager's default handling (quit QEMU). */
  claimGuestShutdown(): GuestShutdownClaim;
}

/** What a verb reports back while it runs. */
export interface VerbContext {
  /** Records a step in the task's `timings` (`qmp_command`, `spawn`, …). */
  mark(step: string): void;
  /** Human-readable progress. */
  progress(text: string): void;
  /** Aborted when the VM is deleted (or the agent stops) while the verb runs. */
  signal: AbortSignal;
}

/**
 * Runs verb `req.action` on `vm` (its phase already checked) and returns the task result.
 *
 * @throws ApiError `vm_invalid_state` (QEMU went away meanwhile), `qemu_spawn_failed`
 *   (start), the signal's reason when aborted, `vm_action_failed` for an unexpected QMP error
 */
export async function runVerb(
  vm: VerbTarget,
  req: Pick<AgentVmActionRequest, "action" | "timeout_seconds" | "paused">,
  ctx: VerbContext,
): Promise<AgentTaskResult> {
  const timeoutMs = (req.timeout_seconds ?? DEFAULT_STOP_TIMEOUT_SECONDS) * 1000;
  ctx.signal.throwIfAborted();
  try {
    switch (req.action) {
      case "start": {
        vm.setPhase("starting");
        ctx.progress(req.paused ? "starting qemu (paused)" : "starting qemu");
        const r = await vm.launch(req.paused ?? false);
        return { phase: r.phase, accelerator: r.accelerator };
      }
      case "pause":
        await command(vm, ctx, "stop");
        vm.setPhase("paused");
        return { phase: "paused" };
      case "resume":
        await command(vm, ctx, "cont");
        vm.setPhase("running");
        return { phase: "running" };
      case "reset":
        await command(vm, ctx, "system_reset");
        return { phase: vm.phase };
      case "poweroff":
        vm.setPhase("stopping");
        ctx.mark("qmp_command");
        ctx.progress("powering off");
        await vm.terminate("poweroff");
        return { phase: "stopped" };
      case "stop":
        return await stop(vm, ctx, timeoutMs);
      case "reboot":
        return await reboot(vm, ctx, timeoutMs);
    }
  } catch (e) {
    throw ctx.signal.aborted ? ctx.signal.reason : verbError(vm, req.action, e);
  }
}

async function command(vm: VerbTarget, ctx: VerbContext, cmd: string): Promise<unknown> {
  const qmp = vm.qmp();
  ctx.mark("qmp_command");
  return await qmp.execute(cmd);
}

/** Resumes a paused guest so it can act on ACPI. */
async function wake(vm: VerbTarget, ctx: VerbContext): Promise<void> {
  if (vm.phase !== "paused") return;
  await vm.qmp().execute("cont");
  vm.setPhase("running");
  ctx.progress("resumed so the guest can see the ACPI power button");
}

/** Waits for `p`; `false` after `ms`; rejects when `signal` aborts or QEMU exits first. */
async function within(
  p: Promise<void>,
  ms: number,
  signal: AbortSignal,
  exited: Promise<void>,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      p.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
      }),
      exited.then(() => {
        throw new ApiError("vm_invalid_state", "QEMU exited while waiting for the guest", {
          phase: "stopped",
        });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

async function stop(vm: VerbTarget, ctx: VerbContext, timeoutMs: number): Promise<AgentTaskResult> {
  await wake(vm, ctx);
  vm.setPhase("stopping");
  const claim = vm.claimGuestShutdown();
  let graceful: boolean;
  try {
    ctx.mark("qmp_command");
    await vm.qmp().execute("system_powerdown");
    ctx.progress(`waiting for the guest to shut down (up to ${timeoutMs / 1000} s)`);
    graceful = await within(claim.shutdown, timeoutMs, ctx.signal, vm.exited());
  } finally {
    claim.release();
  }
  ctx.progress(graceful ? "guest shut down; quitting qemu" : "timeout: forcing qemu off");
  await vm.terminate(
    graceful
      ? "stop: the guest shut down on the ACPI power button"
      : `stop: forced after ${timeoutMs / 1000} s (the guest did not shut down)`,
  );
  return { phase: "stopped" };
}

async function reboot(
  vm: VerbTarget,
  ctx: VerbContext,
  timeoutMs: number,
): Promise<AgentTaskResult> {
  await wake(vm, ctx);
  const claim = vm.claimGuestShutdown();
  let graceful: boolean;
  try {
    ctx.mark("qmp_command");
    await vm.qmp().execute("system_powerdown");
    ctx.progress(`waiting for the guest to shut down (up to ${timeoutMs / 1000} s)`);
    graceful = await within(claim.shutdown, timeoutMs, ctx.signal, vm.exited());
    // After a guest shutdown QEMU (-no-shutdown) waits in status `shutdown`: reset it and let
    // the vCPUs run again. Without one, the reset reboots the running guest.
    await vm.qmp().execute("system_reset");
    await vm.qmp().execute("cont");
  } finally {
    claim.release();
  }
  ctx.progress(graceful ? "guest shut down; reset" : "timeout: reset");
  vm.setPhase("running");
  return { phase: "running" };
}

function verbError(vm: VerbTarget, action: VmAction, e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (msg === "QMP connection closed") {
    return new ApiError("vm_invalid_state", `${action}: QEMU exited meanwhile`, {
      phase: vm.phase,
    });
  }
  return new ApiError("vm_action_failed", `${action}: ${msg}`);
}
