/**
 * What an agent observes of its VMs at runtime: phases, QEMU exits, the observed VM record.
 * Used by the agent protocol (`agent.ts`) and the public VM view (`vms.ts`).
 *
 * @module
 */
import { z } from "zod";
import { TimestampSchema } from "./common.ts";

/**
 * A VM's runtime phase on its agent:
 * `creating` (image, disk, seed, first QEMU start) → `running` ⇄ `paused`; `starting` while
 * QEMU launches for `start`; `stopping` while `stop`/`poweroff` run; `stopped` when no QEMU
 * runs (see {@link VmExitSchema} for why); `deleting`.
 */
export const VmPhaseSchema = z.enum([
  "creating",
  "starting",
  "running",
  "paused",
  "stopping",
  "stopped",
  "deleting",
]);
/** A VM runtime phase. */
export type VmPhase = z.infer<typeof VmPhaseSchema>;

/**
 * Why QEMU last exited:
 * - `requested`: Otherix stopped it (`stop`, `poweroff`, `delete`);
 * - `guest-shutdown`: the guest powered itself off (QMP `SHUTDOWN` with `guest: true`);
 * - `crashed`: QEMU died unasked (signal, OOM kill, killed behind the agent's back, or it
 *   vanished while the agent was down);
 * - `host-reboot`: the agent found no runtime trace of a VM it had been running (its sockets
 *   and pidfile live on the run root, a tmpfs cleared at boot).
 */
export const VmExitReasonSchema = z.enum(["requested", "guest-shutdown", "crashed", "host-reboot"]);
/** Why QEMU exited. */
export type VmExitReason = z.infer<typeof VmExitReasonSchema>;

/** The last exit of a VM's QEMU. */
export const VmExitSchema = z.object({
  reason: VmExitReasonSchema,
  /** When the agent noticed it. */
  at: TimestampSchema,
  /** Details, e.g. `signal SIGKILL`, `QMP SHUTDOWN reason guest-shutdown`. */
  detail: z.string().nullable(),
});
/** A VM exit. */
export type VmExit = z.infer<typeof VmExitSchema>;

/** A VM the agent hosts, as reported in heartbeats, reports and `GET /v1/vms`. */
export const ObservedVmSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  phase: VmPhaseSchema,
  /** QEMU's pid while it runs. */
  pid: z.number().int().nullable(),
  /** The last exit of QEMU (null while it never exited since the VM was created). */
  exit: VmExitSchema.nullable(),
});
/** An observed VM. */
export type ObservedVm = z.infer<typeof ObservedVmSchema>;
