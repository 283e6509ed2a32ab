/**
 * `vm create --wait=cloud-init`: after the VM runs, waits until its `cloud_init` condition
 * (shared/api/vm_runtime.ts; read by the node's agent on the serial console) leaves
 * `pending`. It follows the VM over the event stream (`GET /v1/events?kind=vm&name=`), so it
 * returns as soon as the condition changes; a server without the stream is polled
 * (`GET /v1/vms/{name}`, 250 ms doubling to 2 s).
 *
 * @module
 */
import { type Vm, VmSchema } from "../shared/api/vms.ts";
import type { CloudInitCondition } from "../shared/api/vm_runtime.ts";
import type { ApiClient } from "./client.ts";
import { seg } from "./common.ts";
import { formatDuration } from "./duration.ts";
import { ApiCallError, TransportError, WaitTimeoutError } from "./errors.ts";
import { followEvents } from "./events.ts";
import type { Io } from "./io.ts";

/** VM statuses from which cloud-init cannot finish without another action. */
const HOPELESS = new Set(["failed", "lost", "stopped"]);

/**
 * Waits until VM `name`'s cloud-init is `done` and returns the condition.
 *
 * @param timeoutSeconds how long to wait, seconds
 * @throws ApiCallError `cloud_init_failed` when cloud-init reports an error (the message
 *   carries the console line), `vm_invalid_state` when the VM ends up `failed`, `stopped` or
 *   `lost` first, `vm_not_found` when it is deleted; WaitTimeoutError after `timeoutSeconds`
 */
export async function waitForCloudInit(
  client: ApiClient,
  io: Io,
  name: string,
  timeoutSeconds: number,
): Promise<CloudInitCondition> {
  const deadline = AbortSignal.timeout(timeoutSeconds * 1000);
  const stop = new AbortController();
  const signal = AbortSignal.any([deadline, stop.signal]);
  let last: Vm | null = null;
  try {
    try {
      for await (
        const item of followEvents(client, io, { kinds: ["vm"], name, signal, maxReconnects: 3 })
      ) {
        if (item.type === "relist") last = null;
        if (item.type === "sync" && last === null) {
          throw new ApiCallError("vm_not_found", `vm "${name}" not found`);
        }
        if (item.type !== "event" || item.event.kind !== "vm" || item.event.name !== name) {
          continue;
        }
        if (item.event.type === "deleted") {
          throw new ApiCallError("vm_not_found", `vm "${name}" was deleted while waiting`);
        }
        const parsed = VmSchema.safeParse(item.event.object);
        if (!parsed.success) {
          throw new TransportError(
            "request_failed",
            `unexpected vm in the event stream: ${parsed.error.issues[0]?.message}`,
          );
        }
        last = parsed.data;
        const done = verdict(last);
        if (done) return done;
      }
    } catch (e) {
      if (!(e instanceof ApiCallError && e.status === 404 && e.code === "not_found")) throw e;
      return await poll(client, io, name, io.now() + timeoutSeconds * 1000, timeoutSeconds);
    }
  } finally {
    stop.abort();
  }
  if (deadline.aborted) throw timeoutError(name, timeoutSeconds, last);
  throw new TransportError("request_failed", "the event stream ended unexpectedly");
}

/** The condition when the wait is over (done), null while pending. @throws when hopeless */
function verdict(vm: Vm): CloudInitCondition | null {
  const ci = vm.cloud_init;
  if (ci?.status === "done") return ci;
  if (ci?.status === "error") {
    throw new ApiCallError(
      "cloud_init_failed",
      `vm ${vm.name}: cloud-init reported an error: ${ci.detail ?? "(no detail)"}`,
      { cloud_init: ci },
    );
  }
  if (HOPELESS.has(vm.status)) {
    throw new ApiCallError(
      "vm_invalid_state",
      `vm ${vm.name} is ${vm.status}; cloud-init cannot finish`,
      { status: vm.status },
    );
  }
  return null;
}

function timeoutError(name: string, seconds: number, vm: Vm | null): WaitTimeoutError {
  return new WaitTimeoutError(
    `timed out after ${formatDuration(seconds)} waiting for cloud-init on vm ${name}` +
      ` (cloud_init: ${vm?.cloud_init?.status ?? "not reported"}, status: ${
        vm?.status ?? "unknown"
      }); check with 'otherix vm get ${name}'`,
  );
}

/** The polling fallback. */
async function poll(
  client: ApiClient,
  io: Io,
  name: string,
  deadline: number,
  seconds: number,
): Promise<CloudInitCondition> {
  let interval = 250;
  let last: Vm | null = null;
  for (;;) {
    const { data } = await client.json("GET", `/v1/vms/${seg(name)}`, VmSchema);
    last = data;
    const done = verdict(data);
    if (done) return done;
    const left = deadline - io.now();
    if (left <= 0) throw timeoutError(name, seconds, last);
    await io.sleep(Math.min(interval, left));
    interval = Math.min(interval * 2, 2000);
  }
}
