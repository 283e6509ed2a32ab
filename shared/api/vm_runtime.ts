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

/**
 * Where cloud-init is in the guest's current boot, as the agent reads it on the serial
 * console (agent/cloud_init.ts): `pending` from each QEMU start until cloud-init's final line
 * (`Cloud-init v. … finished at …`) → `done`; `error` once an error line appeared
 * (`Cloud-init v. … ERROR`, `Failed to run module …`), even if the final line follows. A
 * guest without cloud-init stays `pending`.
 */
export const CloudInitStatusSchema = z.enum(["pending", "done", "error"]);
/** A cloud-init status. */
export type CloudInitStatus = z.infer<typeof CloudInitStatusSchema>;

/** The cloud-init condition of a VM (on observed VMs and the VM view). */
export const CloudInitConditionSchema = z.object({
  status: CloudInitStatusSchema,
  /** The console line that decided the status (at most 512 characters); null while pending. */
  detail: z.string().max(512).nullable(),
  /** When the agent saw that line; null while pending. */
  at: TimestampSchema.nullable(),
});
/** A cloud-init condition. */
export type CloudInitCondition = z.infer<typeof CloudInitConditionSchema>;

/**
 * An address the agent learnt for a NIC Otherix did not address (agent/nic_addresses.ts):
 * from the guest agent, else the host's neighbour table; IPv4.
 */
export const LearntNicAddressSchema = z.object({
  /** The NIC's MAC (lowercase). */
  mac: z.string().max(17),
  address: z.string().max(15),
  /** Prefix length when the guest agent says it; null from the neighbour table. */
  prefix_length: z.number().int().min(0).max(32).nullable(),
  source: z.enum(["guest_agent", "neighbour"]),
});
/** A learnt NIC address. */
export type LearntNicAddress = z.infer<typeof LearntNicAddressSchema>;

/** A VM the agent hosts, as reported in heartbeats, reports and `GET /v1/vms`. */
export const ObservedVmSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  phase: VmPhaseSchema,
  /** QEMU's pid while it runs. */
  pid: z.number().int().nullable(),
  /** The last exit of QEMU (null while it never exited since the VM was created). */
  exit: VmExitSchema.nullable(),
  /** cloud-init in the current boot (absent from agents that do not watch for it). */
  cloud_init: CloudInitConditionSchema.optional(),
  /**
   * Addresses learnt for NICs without an IPAM address while the VM runs (absent: none learnt,
   * or an agent that does not look); at most 8 per NIC.
   */
  nic_addresses: z.array(LearntNicAddressSchema).max(64).optional(),
});
/** An observed VM. */
export type ObservedVm = z.infer<typeof ObservedVmSchema>;
