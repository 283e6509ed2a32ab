/**
 * `--wait`: follows a task until it is terminal, showing progress on stderr (cli/progress.ts:
 * on a terminal a `.` per update and a progress bar while an image downloads; otherwise a
 * line per status or progress change, and a line per 10 % of a download).
 *
 * It follows the event stream (`GET /v1/events?kind=task&name=<id>`, `events.ts`): the task's
 * current state arrives first, then each change as it happens, so the wait returns as soon as
 * the task is terminal; a broken stream is resumed from its last revision. A server without
 * the stream (404) is polled instead (`GET /v1/tasks/{id}`, backing off 250 ms → 2 s).
 *
 * @module
 */
import { isTerminal, type Task, TaskSchema } from "../shared/api/tasks.ts";
import type { ApiClient } from "./client.ts";
import { seg } from "./common.ts";
import { formatDuration } from "./duration.ts";
import { ApiCallError, TransportError, WaitTimeoutError } from "./errors.ts";
import { followEvents } from "./events.ts";
import type { Io } from "./io.ts";
import { type ProgressRenderer, progressRenderer } from "./progress.ts";

/** Options of {@link waitForTask}. */
export interface WaitOptions {
  /** Give up after this many seconds. */
  timeoutSeconds: number;
  /** Polling fallback: first poll delay, ms (doubles up to {@link maxIntervalMs}); default 250. */
  initialIntervalMs?: number;
  /** Polling fallback: longest poll delay, ms; default 2000. */
  maxIntervalMs?: number;
  /** Consecutive transport failures tolerated (stream reconnections or polls); default 3. */
  maxTransportFailures?: number;
  /** Appended to the timeout message (e.g. how to check on the resource). */
  hint?: string;
}

/** The final state of a task: parsed, and as received (for `-o json|yaml`). */
export interface WaitResult {
  task: Task;
  raw: unknown;
}

/**
 * Waits for task `taskId` to succeed or fail and returns its final state (the caller decides
 * what a failure means).
 *
 * @throws WaitTimeoutError when the task is still running after `timeoutSeconds`
 * @throws ApiCallError `task_not_found` when the task does not exist or was deleted; other
 *   ApiCallErrors / TransportErrors from the stream or the polls (transient transport
 *   failures are retried up to `maxTransportFailures` times in a row)
 */
export async function waitForTask(
  client: ApiClient,
  io: Io,
  taskId: string,
  options: WaitOptions,
): Promise<WaitResult> {
  const progress = progressRenderer(io);
  try {
    try {
      return await followTask(client, io, taskId, options, progress);
    } catch (e) {
      if (!(e instanceof ApiCallError && e.status === 404 && e.code === "not_found")) throw e;
      // An otherix-api without GET /v1/events: poll.
    }
    return await pollTask(client, io, taskId, options, progress);
  } finally {
    progress.end();
  }
}

function timeoutError(taskId: string, options: WaitOptions, lastStatus?: string) {
  return new WaitTimeoutError(
    `timed out after ${formatDuration(options.timeoutSeconds)} waiting for task ${taskId}` +
      ` (last status: ${lastStatus ?? "unknown"}); it continues on the server` +
      (options.hint ? `: ${options.hint}` : ""),
  );
}

/** The stream path: returns on the task's first terminal state. */
async function followTask(
  client: ApiClient,
  io: Io,
  taskId: string,
  options: WaitOptions,
  progress: ProgressRenderer,
): Promise<WaitResult> {
  const remaining = options.timeoutSeconds * 1000;
  const deadline = AbortSignal.timeout(remaining);
  const stop = new AbortController();
  const signal = AbortSignal.any([deadline, stop.signal]);
  let seen = false;
  try {
    for await (
      const item of followEvents(client, io, {
        kinds: ["task"],
        name: taskId,
        signal,
        maxReconnects: options.maxTransportFailures ?? 3,
      })
    ) {
      if (item.type === "ping") progress.tick();
      if (item.type === "relist") seen = false;
      if (item.type === "sync" && !seen) {
        throw new ApiCallError("task_not_found", `task ${taskId} not found`);
      }
      if (item.type !== "event" || item.event.kind !== "task" || item.event.name !== taskId) {
        continue;
      }
      if (item.event.type === "deleted") {
        throw new ApiCallError("task_not_found", `task ${taskId} was deleted while waiting`);
      }
      const parsed = TaskSchema.safeParse(item.event.object);
      if (!parsed.success) {
        throw new TransportError(
          "request_failed",
          `unexpected task in the event stream: ${parsed.error.issues[0]?.message}`,
        );
      }
      seen = true;
      progress.task(parsed.data);
      if (isTerminal(parsed.data.status)) return { task: parsed.data, raw: item.event.object };
    }
  } finally {
    stop.abort();
  }
  if (deadline.aborted) throw timeoutError(taskId, options, progress.lastStatus);
  throw new TransportError("request_failed", "the event stream ended unexpectedly");
}

/** The polling fallback. */
async function pollTask(
  client: ApiClient,
  io: Io,
  taskId: string,
  options: WaitOptions,
  progress: ProgressRenderer,
): Promise<WaitResult> {
  const deadline = io.now() + options.timeoutSeconds * 1000;
  const maxInterval = options.maxIntervalMs ?? 2000;
  const maxFailures = options.maxTransportFailures ?? 3;
  let interval = options.initialIntervalMs ?? 250;
  let failures = 0;
  for (;;) {
    const remaining = deadline - io.now();
    if (remaining <= 0) throw timeoutError(taskId, options, progress.lastStatus);
    await io.sleep(Math.min(interval, remaining));
    interval = Math.min(interval * 2, maxInterval);
    let result: { data: Task; raw: unknown };
    try {
      result = await client.json("GET", `/v1/tasks/${seg(taskId)}`, TaskSchema);
      failures = 0;
    } catch (e) {
      if (
        e instanceof TransportError && e.code !== "request_failed" && ++failures <= maxFailures &&
        io.now() < deadline
      ) {
        continue;
      }
      throw e;
    }
    progress.task(result.data);
    if (isTerminal(result.data.status)) return { task: result.data, raw: result.raw };
  }
}
