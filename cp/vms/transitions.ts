/**
 * The VM state rules of the lifecycle verbs (one table, used by the routes to refuse and by
 * the task handler to project): which statuses allow each verb, the desired phase a verb
 * records, the status shown while its task runs, and the status an agent phase maps to.
 *
 * | verb | allowed when status is | desired phase | status while running |
 * | --- | --- | --- | --- |
 * | start | stopped (or failed after a successful create) | running | starting |
 * | stop, poweroff | running, paused | stopped | stopping |
 * | reboot, reset | running | (unchanged) | (unchanged) |
 * | pause | running | paused | (unchanged) |
 * | resume | paused | running | (unchanged) |
 *
 * @module
 */
import type { VmAction } from "../../shared/api/tasks.ts";
import type { VmPhase } from "../../shared/api/vm_runtime.ts";
import type { VmDesiredPhase, VmStatus } from "../../shared/api/vms.ts";
import { ApiError } from "../../shared/errors.ts";
import type { VmRecord } from "../repo/records.ts";

const ALLOWED: Record<VmAction, readonly VmStatus[]> = {
  start: ["stopped", "failed"],
  stop: ["running", "paused"],
  poweroff: ["running", "paused"],
  reboot: ["running"],
  reset: ["running"],
  pause: ["running"],
  resume: ["paused"],
};

/**
 * Throws unless `vm`'s status allows `action` (table in the module doc). A `failed` VM may
 * be started only if it was created once (its image format is known).
 *
 * @throws ApiError `vm_invalid_state` with `details: {status, action, allowed}`
 */
export function checkTransition(vm: VmRecord, action: VmAction): void {
  const allowed = ALLOWED[action];
  const ok = allowed.includes(vm.status) &&
    !(vm.status === "failed" && (action !== "start" || vm.image_format === null));
  if (!ok) {
    throw new ApiError(
      "vm_invalid_state",
      `cannot ${action} vm "${vm.name}": it is ${vm.status}` +
        ` (${action} needs ${allowed.filter((s) => s !== "failed").join(" or ")})`,
      { status: vm.status, action, allowed: [...allowed] },
    );
  }
}

/** The desired phase `action` records (null: unchanged). */
export function desiredPhaseOf(action: VmAction): VmDesiredPhase | null {
  switch (action) {
    case "start":
    case "resume":
      return "running";
    case "stop":
    case "poweroff":
      return "stopped";
    case "pause":
      return "paused";
    default:
      return null;
  }
}

/** The status shown while `action`'s task runs (null: unchanged). */
export function busyStatusOf(action: VmAction | "create" | "delete"): VmStatus | null {
  switch (action) {
    case "create":
      return "creating";
    case "delete":
      return "deleting";
    case "start":
      return "starting";
    case "stop":
    case "poweroff":
      return "stopping";
    default:
      return null;
  }
}

/** The settled VM status an agent phase maps to (null: a transitional phase). */
export function statusOfPhase(phase: VmPhase): VmStatus | null {
  switch (phase) {
    case "running":
    case "paused":
    case "stopped":
      return phase;
    default:
      return null;
  }
}
