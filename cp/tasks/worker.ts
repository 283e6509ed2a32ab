/**
 * The task worker (`workers.enabled`): claims queued tasks under a store lease and runs them
 * with the handler registered for their type (cp/tasks/registry.ts).
 *
 * Claims (durable, like a Kubernetes lease): a worker holds one store lease, renewed every
 * third of `workers.lease_ttl_seconds`. To run task `<id>` it writes `/task-claims/<id>`
 * attached to that lease in one transaction that requires the claim to be absent and the
 * task unchanged, and counts the attempt. Every write of the handler is fenced by the claim
 * (compare on its revision), so two workers — in one process or in two control-plane
 * processes on one store — never run one task at once, and a worker that lost its lease can
 * no longer write. When a worker dies its lease expires, the store deletes its claims, and
 * the other workers (watching `/task-claims/`) claim the tasks again.
 *
 * Sources of work: a watch on `/tasks-active/` (new tasks) and `/task-claims/` (released or
 * expired claims), plus a resync of the active index every `workers.resync_seconds`.
 * A handler that throws (not a lost claim) releases the claim and the task is retried with
 * per-task exponential backoff.
 *
 * @module
 */
import { redactText } from "../../shared/url_redact.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { ProgressThrottle, sameProgress } from "../../shared/progress_throttle.ts";
import type { CpContext } from "../context.ts";
import { WorkQueue } from "../controllers/workqueue.ts";
import { keys, type TaskClaim, type TaskRecord } from "../repo/records.ts";
import { rangeAll } from "../store/store.ts";
import { finishOps, terminal } from "./queue.ts";
import {
  ClaimLostError,
  type GuardedOps,
  type TaskRegistry,
  type TaskRuntime,
} from "./registry.ts";

/** A running worker. */
export interface Worker {
  /** This worker's id (written into its claims). */
  readonly id: string;
  /** Stops claiming, aborts its runners and releases their claims (another worker resumes). */
  stop(): Promise<void>;
  /**
   * Simulates a crash (tests): stops everything without releasing claims or the lease, so
   * the claims expire with the lease as if the process had died.
   */
  crash(): Promise<void>;
  /** Resolves when no task runs on this worker and none is queued (tests). */
  idle(): Promise<void>;
}

/** Options of {@link startWorker}. */
export interface WorkerOptions {
  /** Worker id (default: `<replica>/<random>`). */
  id?: string;
  /** Lease TTL, seconds (default `workers.lease_ttl_seconds`). */
  leaseTtlSeconds?: number;
  /** Resync period of the active index, ms (default `workers.resync_seconds`). */
  resyncMs?: number;
}

/**
 * Starts a worker running the tasks of `registry`.
 *
 * @throws StoreError when the lease cannot be granted
 */
export async function startWorker(
  ctx: CpContext,
  registry: TaskRegistry,
  opts: WorkerOptions = {},
): Promise<Worker> {
  const { store } = ctx;
  const id = opts.id ?? `${ctx.pki.replicaName}/${crypto.randomUUID().slice(0, 8)}`;
  const ttl = opts.leaseTtlSeconds ?? ctx.cfg.workers.lease_ttl_seconds;
  const log = ctx.log.with({ component_part: "worker", worker: id });
  const queue = new WorkQueue<string>({
    baseDelayMs: ctx.cfg.workers.poll_interval_ms,
    maxDelayMs: 60_000,
  });
  const running = new Map<
    string,
    { done: Promise<void>; abort: AbortController; cancel: AbortController }
  >();
  let lease = await store.grant(ttl);
  let stopped = false;
  const idleWaiters: (() => void)[] = [];
  const checkIdle = () => {
    if (running.size === 0 && queue.length === 0) {
      for (const w of idleWaiters.splice(0)) w();
    }
  };

  // Lease renewal; losing it aborts every runner (their claims are gone with it).
  const renew = setInterval(async () => {
    try {
      await store.keepAlive(lease);
    } catch (e) {
      if (stopped) return;
      log.warn("worker lease lost; abandoning claimed tasks", { err: e });
      for (const r of running.values()) r.abort.abort();
      try {
        lease = await store.grant(ttl);
        for (const kv of await rangeAll(store, keys.activeTasks)) {
          queue.add(kv.key.slice(keys.activeTasks.length));
        }
      } catch (err) {
        log.error("worker cannot get a new lease", { err });
      }
    }
  }, Math.max(200, (ttl * 1000) / 3));

  const cancels: (() => void)[] = [];
  const resyncActive = async () => {
    const kvs = await rangeAll(store, keys.activeTasks);
    for (const kv of kvs) {
      const taskId = kv.key.slice(keys.activeTasks.length);
      if (!running.has(taskId)) queue.add(taskId);
    }
    return kvs.length;
  };
  const rev = await store.currentRevision();
  cancels.push(store.watch(keys.activeTasks, (ev) => {
    if (ev.type === "put") queue.add(ev.key.slice(keys.activeTasks.length));
  }, { fromRevision: rev, onError: () => void resyncActive() }));
  cancels.push(store.watch(keys.taskClaims, (ev) => {
    if (ev.type === "delete") queue.add(ev.key.slice(keys.taskClaims.length));
  }, { fromRevision: rev, onError: () => void resyncActive() }));
  // Cancel requests of running tasks (a `vm delete` superseding them). If the watch falls
  // out of the retained history it is restarted and the running tasks are re-read.
  const watchCancels = (from: string) =>
    store.watch(keys.tasks, (ev) => {
      if (ev.type !== "put") return;
      const t = ev.value as TaskRecord;
      if (t?.cancel_requested) running.get(t.id)?.cancel.abort();
    }, {
      fromRevision: from,
      onError: async () => {
        if (stopped) return;
        const now = await store.currentRevision();
        cancels.push(watchCancels(now));
        for (const [id, r] of running) {
          const t = (await store.get<TaskRecord>(keys.task(id)))?.value;
          if (t?.cancel_requested) r.cancel.abort();
        }
      },
    });
  cancels.push(watchCancels(rev));
  const queued = await resyncActive();
  if (queued) log.info("resuming queued tasks", { count: queued });
  const resyncMs = opts.resyncMs ?? ctx.cfg.workers.resync_seconds * 1000;
  const resyncTimer = setInterval(
    () => void resyncActive().catch((e) => log.warn("task resync failed", { err: e })),
    resyncMs,
  );

  const claim = async (taskId: string): Promise<void> => {
    if (running.has(taskId)) return;
    const tkv = await store.get<TaskRecord>(keys.task(taskId));
    if (!tkv || isTerminal(tkv.value.status)) {
      await store.delete(keys.activeTask(taskId));
      return;
    }
    const handler = registry.get(tkv.value.type);
    if (!handler) {
      log.error("no handler for task type; leaving it queued", {
        task_id: taskId,
        type: tkv.value.type,
      });
      return;
    }
    if (await store.get(keys.taskClaim(taskId))) return; // claimed elsewhere
    const now = ctx.now().toISOString();
    let task: TaskRecord = {
      ...tkv.value,
      attempts: tkv.value.attempts + 1,
      started_at: tkv.value.started_at ?? now,
      updated_at: now,
    };
    const claimRec: TaskClaim = { worker: id, claimed_at: now };
    const res = await store.txn({
      compare: [
        { key: keys.taskClaim(taskId), absent: true },
        { key: tkv.key, modRevision: tkv.modRevision },
      ],
      success: [
        { type: "put", key: keys.taskClaim(taskId), value: claimRec, lease },
        { type: "put", key: tkv.key, value: task },
      ],
    });
    if (!res.succeeded) {
      queue.addRateLimited(taskId); // raced with another worker or a task update
      return;
    }
    const claimKey = keys.taskClaim(taskId);
    const claimRev = res.revision;
    const abort = new AbortController();
    const cancel = new AbortController();
    if (task.cancel_requested) cancel.abort();
    const tlog = log.with({ task_id: taskId, type: task.type, vm: task.resource.name });
    tlog.info("task claimed", { attempt: task.attempts });

    const ensureClaim = async () => {
      const cur = await store.get(claimKey);
      if (!cur || cur.modRevision !== claimRev) {
        abort.abort();
        throw new ClaimLostError(taskId);
      }
    };
    const created = Date.parse(task.created_at);
    const timings: Record<string, number> = { ...task.timings };
    const mark = (name: string, ms?: number) => {
      timings[name] = ms ?? Math.max(0, ctx.now().getTime() - created);
    };
    mark("claimed");
    const throttle = new ProgressThrottle(() => ctx.now().getTime());
    const write = async (next: TaskRecord, extra: GuardedOps, done: boolean) => {
      if (abort.signal.aborted) throw new ClaimLostError(taskId);
      if (done) mark("finished");
      next = { ...next, timings: { ...timings } };
      const r = await store.txn({
        compare: [{ key: claimKey, modRevision: claimRev }, ...(extra.compare ?? [])],
        success: [
          ...(done
            ? finishOps(next)
            : [{ type: "put" as const, key: keys.task(taskId), value: next }]),
          ...(extra.ops ?? []),
        ],
      });
      if (r.succeeded) {
        task = next;
        return true;
      }
      await ensureClaim();
      return false;
    };
    const rt: TaskRuntime = {
      ctx,
      log: tlog,
      get task() {
        return task;
      },
      signal: abort.signal,
      cancelled: cancel.signal,
      mark,
      update: (next, extra = {}) =>
        write({ ...next, updated_at: ctx.now().toISOString() }, extra, false),
      progress: async (text, bytes = null) => {
        const cur = task.progress_bytes ?? null;
        if (task.progress === text && sameProgress(cur, bytes)) return;
        if (bytes && cur) {
          // A byte-counting step moving on (its text moves with the figures): throttled.
          if (!throttle.offer(bytes)) return;
        } else {
          throttle.reset(); // a new step is written at once
          if (bytes) throttle.offer(bytes);
        }
        await write(
          {
            ...task,
            progress: text,
            progress_bytes: bytes && { ...bytes },
            updated_at: ctx.now().toISOString(),
          },
          {},
          false,
        );
      },
      finish: async (raw, extra = {}) => {
        // Task errors may quote an image URL: its credentials reach neither record nor log.
        const error = raw && { ...raw, message: redactText(raw.message) };
        const ok = await write(terminal(task, error, ctx.now()), extra, true);
        if (ok) {
          ctx.metrics?.taskFinished(task);
          if (error) {
            tlog.warn("task failed", { code: error.code, message: error.message });
          } else tlog.info("task succeeded");
        }
        return ok;
      },
    };
    const done = (async () => {
      try {
        await handler.run(rt);
        queue.forget(taskId);
      } catch (e) {
        if (e instanceof ClaimLostError || abort.signal.aborted) {
          tlog.info("task abandoned (claim lost or worker stopping)");
          return;
        }
        const retry = queue.nextDelayMs(taskId);
        tlog.error("task handler failed; releasing the claim and retrying", {
          err: e,
          retry_in_ms: retry,
        });
        await store.txn({
          compare: [{ key: claimKey, modRevision: claimRev }],
          success: [{ type: "delete", key: claimKey }],
        }).catch(() => {});
        if (!stopped) queue.addRateLimited(taskId);
      } finally {
        running.delete(taskId);
        checkIdle();
      }
    })();
    running.set(taskId, { done, abort, cancel });
  };

  const loop = (async () => {
    for (;;) {
      const taskId = await queue.get();
      if (taskId === null) return;
      try {
        await claim(taskId);
      } catch (e) {
        if (!stopped) {
          log.warn("cannot claim task; retrying", { task_id: taskId, err: e });
          queue.addRateLimited(taskId);
        }
      } finally {
        queue.done(taskId);
        checkIdle();
      }
    }
  })();

  const halt = async (release: boolean) => {
    if (stopped) return;
    stopped = true;
    clearInterval(renew);
    clearInterval(resyncTimer);
    for (const c of cancels) c();
    queue.shutDown();
    for (const r of running.values()) r.abort.abort();
    await Promise.allSettled([loop, ...[...running.values()].map((r) => r.done)]);
    if (release) await store.revoke(lease).catch(() => {});
    for (const w of idleWaiters.splice(0)) w();
  };

  return {
    id,
    stop: () => halt(true),
    crash: () => halt(false),
    idle() {
      if (running.size === 0 && queue.length === 0) return Promise.resolve();
      return new Promise((r) => idleWaiters.push(r));
    },
  };
}
