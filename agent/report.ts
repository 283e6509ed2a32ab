/**
 * The report pusher: `POST {cp_url}/v1/nodes/report` (shared/api/agent.ts `NodeReportSchema`,
 * mTLS like heartbeats) as soon as something changed, so the control plane learns of a VM's
 * `running` (or a task's end) without polling.
 *
 * - A VM's phase/pid/exit change and a task reaching a terminal state are urgent: a report
 *   leaves in the same turn of the event loop (a microtask batches changes made together).
 *   Other task changes (accepted, running, progress) are coalesced for `coalesceMs`.
 * - One report in flight at a time; changes made meanwhile go out right after it.
 * - Every report carries the complete VM list and the tasks changed since the last report
 *   that reached the control plane (a task acknowledged at version v is sent again only
 *   when it changes after v), at most `MAX_REPORTED_TASKS` per report.
 * - A failed report is retried with exponential backoff (`initialBackoffMs` doubling up to
 *   `maxBackoffMs`); changes meanwhile wait for the retry. Heartbeats carry the recent tasks
 *   as well (agent/heartbeat.ts), so nothing is lost while the control plane is away.
 * - `cp_url` is the current URL of the agent's control-plane list (agent/cp_endpoints.ts): a
 *   report that gets no answer moves to the next replica and is sent there at once.
 *
 * @module
 */
import { MAX_REPORTED_TASKS, type NodeReport, NodeReportSchema } from "../shared/api/agent.ts";
import { isTerminal } from "../shared/api/tasks.ts";
import type { Logger } from "../shared/log.ts";
import type { AgentIdentity } from "./bootstrap.ts";
import { cpTls, postToCpWithFailover, urlConnection } from "./cp_client.ts";
import type { CpEndpoints } from "./cp_endpoints.ts";
import { errorMessage } from "./fsutil.ts";
import type { TaskManager } from "./tasks.ts";
import type { VmManager } from "./vms.ts";

/** Sends one report; rejects when it did not reach the control plane. */
export type ReportSender = (report: NodeReport, signal: AbortSignal) => Promise<void>;

/** Options of {@link startReporter}. */
export interface ReporterOptions {
  /** Node name (the client certificate's CN). */
  nodeName: string;
  vms: Pick<VmManager, "list" | "subscribe">;
  tasks: Pick<TaskManager, "get" | "subscribe">;
  log: Logger;
  /** How reports are sent: {@link mtlsReportSender} in the agent; tests may inject one. */
  send: ReportSender;
  /** How long non-urgent task changes are held to be sent together, ms (default 100). */
  coalesceMs?: number;
  /** First retry delay after a failure, ms (default 250); doubles per failure. */
  initialBackoffMs?: number;
  /** Longest retry delay, ms (default 10 000). */
  maxBackoffMs?: number;
}

/** A running report pusher. */
export interface Reporter {
  /** Stops the pusher (a report in flight is aborted; pending changes are dropped). */
  stop(): Promise<void>;
  /** Reports sent successfully so far. */
  readonly sent: number;
}

/**
 * The agent's sender: `POST {cp_url}/v1/nodes/report` over mTLS with the node certificate, on
 * a kept-alive connection of its own (a task's result reaches its worker without a TLS
 * handshake; agent/cp_client.ts `urlConnection`); the server must be a control plane. A report
 * that gets no answer is sent to the next replica of `endpoints` at once.
 *
 * @param requestTimeoutMs per-attempt timeout, ms
 */
export function mtlsReportSender(
  endpoints: CpEndpoints,
  identity: AgentIdentity,
  requestTimeoutMs = 10_000,
): ReportSender {
  const tls = cpTls(identity);
  const connection = urlConnection();
  return async (report, signal) => {
    await postToCpWithFailover(endpoints, "/v1/nodes/report", report, tls, {
      timeoutMs: requestTimeoutMs,
      component: "report",
      signal,
      agentFor: (url) => connection.agentFor(url),
    });
  };
}

/** Starts pushing reports; the first one (the VM list) goes out at once. */
export function startReporter(o: ReporterOptions): Reporter {
  const coalesceMs = o.coalesceMs ?? 100;
  const initialBackoffMs = o.initialBackoffMs ?? 250;
  const maxBackoffMs = o.maxBackoffMs ?? 10_000;
  /** Task id → the version to acknowledge. */
  const dirty = new Map<string, number>();
  let vmChanges = 1;
  let stopped = false;
  let inFlight: Promise<void> | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timerKind: "coalesce" | "backoff" | null = null;
  let microtask = false;
  let failures = 0;
  let sent = 0;
  /** When the oldest change not yet in a report was made (performance.now, ms). */
  let firstChangeAt: number | null = null;
  const ctrl = new AbortController();

  const pending = () => vmChanges > 0 || dirty.size > 0;

  const schedule = (urgent: boolean) => {
    if (stopped || inFlight || timerKind === "backoff") return;
    if (urgent) {
      if (microtask) return;
      microtask = true;
      queueMicrotask(() => {
        microtask = false;
        if (timerKind === "coalesce") clearTimer();
        if (!inFlight && timerKind === null) void flush();
      });
      return;
    }
    if (timerKind === null) {
      timerKind = "coalesce";
      timer = setTimeout(() => {
        timerKind = null;
        void flush();
      }, coalesceMs);
    }
  };

  const clearTimer = () => {
    clearTimeout(timer);
    timerKind = null;
  };

  const flush = async () => {
    if (stopped || inFlight || !pending()) return;
    const sentVms = vmChanges;
    const sentTasks: [string, number][] = [];
    const tasks: NodeReport["tasks"] = [];
    for (const [id, version] of dirty) {
      const t = o.tasks.get(id);
      if (!t) {
        dirty.delete(id); // pruned: nothing left to say
        continue;
      }
      if (tasks.length >= MAX_REPORTED_TASKS) break;
      tasks.push(t);
      sentTasks.push([id, version]);
    }
    const parsed = NodeReportSchema.safeParse({
      node_name: o.nodeName,
      vms: o.vms.list(),
      tasks,
    });
    const report = parsed.data!;
    const t0 = performance.now();
    const waitedMs = firstChangeAt === null ? 0 : t0 - firstChangeAt;
    firstChangeAt = null;
    // An invalid report (a bug) is treated like a failed one: logged, retried with backoff.
    const attempt = parsed.success
      ? o.send(report, ctrl.signal)
      : Promise.reject(new Error(`invalid report: ${parsed.error.message}`));
    inFlight = attempt.then(() => {
      sent++;
      vmChanges -= sentVms;
      for (const [id, v] of sentTasks) if (dirty.get(id) === v) dirty.delete(id);
      if (failures > 0) o.log.info("report: delivered again", { after_failures: failures });
      failures = 0;
      o.log.debug("report: sent", {
        vms: report.vms.length,
        tasks: report.tasks.map((t) => `${t.op}:${t.status}`),
        phases: report.vms.map((v) => v.phase),
        waited_ms: Number(waitedMs.toFixed(1)),
        ms: Math.round(performance.now() - t0),
      });
    }, (e) => {
      if (stopped) return;
      failures++;
      const delay = Math.min(maxBackoffMs, initialBackoffMs * 2 ** (failures - 1));
      const fields = { err: errorMessage(e), retry_ms: delay, failures };
      if (failures === 1) o.log.warn("report: failed", fields);
      else o.log.debug("report: failed again", fields);
      timerKind = "backoff";
      timer = setTimeout(() => {
        timerKind = null;
        void flush();
      }, delay);
    }).finally(() => {
      inFlight = null;
      if (!stopped && timerKind === null && pending()) void flush();
    });
    await inFlight;
  };

  const offVms = o.vms.subscribe(() => {
    firstChangeAt ??= performance.now();
    vmChanges++;
    schedule(true);
  });
  const offTasks = o.tasks.subscribe((task, version) => {
    firstChangeAt ??= performance.now();
    dirty.set(task.id, version);
    schedule(isTerminal(task.status));
  });
  schedule(true);

  return {
    async stop() {
      stopped = true;
      offVms();
      offTasks();
      clearTimer();
      ctrl.abort(new Error("reporter stopped"));
      await inFlight?.catch(() => {});
    },
    get sent() {
      return sent;
    },
  };
}
