/**
 * What the agent must remember about a VM's QEMU across its own restarts:
 * `<state>/vms/<id>/state.json` = `{"running": bool, "exit": VmExit | null}`.
 *
 * - `running: true` is written once QEMU has been launched and `false` when it exited, so a
 *   restarted agent that finds no live QEMU knows whether one should have been there (then it
 *   died while the agent was down: `crashed`, or `host-reboot` when the run root was cleared);
 * - `exit` is the last exit of QEMU, reported as `ObservedVm.exit` (shared/api/vm_runtime.ts).
 *
 * Written atomically (temp file + rename). A missing or unreadable file reads as
 * `{running: true, exit: null}`: every create starts QEMU, so a prepared VM without a state
 * file was last meant to run.
 *
 * @module
 */
import { z } from "zod";
import { VmExitSchema } from "../shared/api/vm_runtime.ts";
import { writeFileAtomic } from "./fsutil.ts";

/** The content of `state.json`. */
export const VmStateFileSchema = z.object({
  /** True while QEMU was meant to be running (launched and not yet seen to exit). */
  running: z.boolean(),
  /** QEMU's last exit (null: never exited since the VM was created). */
  exit: VmExitSchema.nullable(),
});
/** The content of `state.json`. */
export type VmStateFile = z.infer<typeof VmStateFileSchema>;

/** Reads `path`; missing or invalid: `{running: true, exit: null}` (see the module doc). */
export async function readVmState(path: string): Promise<VmStateFile> {
  try {
    return VmStateFileSchema.parse(JSON.parse(await Deno.readTextFile(path)));
  } catch {
    return { running: true, exit: null };
  }
}

/**
 * Writes `state` to `path` atomically (mode 0640).
 *
 * @throws the underlying Deno error (the previous file stays intact)
 */
export async function writeVmState(path: string, state: VmStateFile): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(state) + "\n", 0o640);
}
