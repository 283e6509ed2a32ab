/**
 * The task registry: task type → handler. A new task type is one handler module registered
 * here by the domain that owns it (e.g. cp/vms/tasks.ts registers `vm.*`).
 *
 * A handler runs a claimed task to its end through a {@link TaskRuntime}: every write it makes
 * is fenced by the worker's claim (a worker that lost its claim can no longer write), and it
 * ends the task with {@link TaskRuntime.finish}. Handlers must be idempotent: after a crash
 * another worker runs the same task again from its stored state (`attempts` > 1).
 *
 * @module
 */
import type { ProgressBytes, TaskType } from "../../shared/api/tasks.ts";
import type { ErrorInfo } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import type { CpContext } from "../context.ts";
import type { TaskRecord } from "../repo/records.ts";
import type { Compare, Op } from "../store/store.ts";

/** Extra guarded writes committed atomically with a task update. */
export interface GuardedOps {
  compare?: Compare[];
  ops?: Op[];
}

/** What a handler gets to run one task. */
export interface TaskRuntime {
  ctx: CpContext;
  log: Logger;
  /** The task as last written by this runtime. */
  readonly task: TaskRecord;
  /**
   * Aborted when the worker lost its claim (lease expired) or is stopping: stop at once and
   * write nothing; another worker (or this one after restart) takes the task over.
   */
  signal: AbortSignal;
  /** Aborted when a `vm delete` superseded the task (`cancel_requested`). */
  cancelled: AbortSignal;
  /**
   * Writes `next` as the task (plus `extra`), fenced by the claim.
   *
   * @returns false when a compare of `extra` failed (nothing written)
   * @throws ClaimLostError when the claim is gone
   */
  update(next: TaskRecord, extra?: GuardedOps): Promise<boolean>;
  /**
   * Records that step `name` happened now (or `ms` after `created_at` when given); kept in
   * the task's `timings` at the next write.
   */
  mark(name: string, ms?: number): void;
  /**
   * Sets the human-readable progress and, for a step that has them (an image download), its
   * byte figures; without `bytes` they are cleared (best effort, fenced). Updates that only
   * move the byte figures are throttled (shared/progress_throttle.ts: about 4 writes a
   * second, plus one per 5 % step), so a fast download costs a bounded number of writes.
   */
  progress(text: string, bytes?: ProgressBytes | null): Promise<void>;
  /**
   * Ends the task: `succeeded` (error null) or `failed`, dequeued and unclaimed, with `extra`
   * in the same transaction (e.g. the projection onto the VM).
   *
   * @returns false when a compare of `extra` failed (nothing written; read and retry)
   * @throws ClaimLostError when the claim is gone
   */
  finish(error: ErrorInfo | null, extra?: GuardedOps): Promise<boolean>;
}

/** A handler of one or more task types. */
export interface TaskHandler {
  types: readonly TaskType[];
  /** Runs the task until it is finished (or `rt.signal` aborts). */
  run(rt: TaskRuntime): Promise<void>;
}

/** The worker's claim on a task is gone: stop without writing. */
export class ClaimLostError extends Error {
  constructor(taskId: string) {
    super(`task ${taskId}: claim lost`);
    this.name = "ClaimLostError";
  }
}

/** Task type → handler. */
export class TaskRegistry {
  #handlers = new Map<TaskType, TaskHandler>();

  /** Registers `h` for its types. @throws Error when a type already has a handler */
  register(h: TaskHandler): this {
    for (const t of h.types) {
      if (this.#handlers.has(t)) throw new Error(`task type ${t} registered twice`);
      this.#handlers.set(t, h);
    }
    return this;
  }

  /** The handler of `type`, if any. */
  get(type: TaskType): TaskHandler | undefined {
    return this.#handlers.get(type);
  }
}
