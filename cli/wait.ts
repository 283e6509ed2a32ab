/**
 * `--wait`: polls `GET /v1/tasks/{id}` until the task is terminal, showing progress on stderr
 * (a `.` per poll on a terminal, a line per status change otherwise).
 *
 * @module
 */
import { isTerminal, type Task, TaskSchema } from "../shared/api/tasks.ts";
import type { ApiClient } from "./client.ts";
import { formatDuration } from "./duration.ts";
import { TransportError, WaitTimeoutError } from "./errors.ts";
import type { Io } from "./io.ts";
import { seg } from "./common.ts";

/** Options of {@link waitForTask}. */
export interface WaitOptions {
  /** Give up after this many seconds. */
  timeoutSeconds: number;
  /** First poll delay, ms (doubles up to {@link maxIntervalMs}); default 250. */
  initialIntervalMs?: number;
  /** Longest poll delay, ms; default 2000. */
  maxIntervalMs?: number;
  /** Consecutive transport failures tolerated while polling; default 3. */
  maxTransportFailures?: number;
  /** Appended to the timeout message (e.g. how to check on the resource). */
  hint?: string;
}

/**
 * Waits for task `taskId` to succeed or fail and returns its final state (the caller decides
 * what a failure means).
 *
 * @throws WaitTimeoutError when the task is still running after `timeoutSeconds`
 * @throws ApiCallError / TransportError from polling (transient transport failures are
 *   retried up to `maxTransportFailures` times in a row)
 */
export async function waitForTask(
  client: ApiClient,
  io: Io,
  taskId: string,
  options: WaitOptions,
): Promise<{ task: Task; raw: unknown }> {
  const deadline = io.now() + options.timeoutSeconds * 1000;
  const maxInterval = options.maxIntervalMs ?? 2000;
  const maxFailures = options.maxTransportFailures ?? 3;
  const dots = io.stderrIsTerminal();
  let interval = options.initialIntervalMs ?? 250;
  let lastStatus: string | undefined;
  let failures = 0;
  let printedDots = false;
  try {
    for (;;) {
      const remaining = deadline - io.now();
      if (remaining <= 0) {
        throw new WaitTimeoutError(
          `timed out after ${formatDuration(options.timeoutSeconds)} waiting for task ${taskId}` +
            ` (last status: ${lastStatus ?? "unknown"}); it continues on the server` +
            (options.hint ? `: ${options.hint}` : ""),
        );
      }
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
      const task = result.data;
      if (dots) {
        io.err(".");
        printedDots = true;
      } else if (task.status !== lastStatus) {
        io.err(`task=${task.id} status=${task.status}\n`);
      }
      lastStatus = task.status;
      if (isTerminal(task.status)) return { task, raw: result.raw };
    }
  } finally {
    if (printedDots) io.err("\n");
  }
}
