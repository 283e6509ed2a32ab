/**
 * The report pusher's rules with in-memory VM/task sources and a sender the test controls
 * (the real mTLS path to a control plane is covered by agent_process_test.ts): urgent changes
 * go out at once, others are coalesced, one report is in flight at a time, failures are
 * retried with the unacknowledged tasks, acknowledged ones are not sent again.
 */
import { assert, assertEquals } from "../assert.ts";
import type { AgentTask, NodeReport } from "../../shared/api/agent.ts";
import type { ObservedVm } from "../../shared/api/vm_runtime.ts";
import { startReporter } from "../../agent/report.ts";
import type { TaskListener } from "../../agent/tasks.ts";
import type { VmListener } from "../../agent/vms.ts";
import { memoryLogger, waitUntil } from "./helpers.ts";

const VM_ID = "0b5c8a3e-6f5e-4d0e-9a59-0c0e7f1d2a11";
const T1 = "1b5c8a3e-6f5e-4d0e-9a59-0c0e7f1d2a11";
const T2 = "2b5c8a3e-6f5e-4d0e-9a59-0c0e7f1d2a11";

function sources() {
  const vm: ObservedVm = { id: VM_ID, name: "a", phase: "creating", pid: null, exit: null };
  const vmListeners = new Set<VmListener>();
  const taskListeners = new Set<TaskListener>();
  const tasks = new Map<string, { task: AgentTask; version: number }>();
  return {
    vms: {
      list: () => [{ ...vm }],
      subscribe(l: VmListener) {
        vmListeners.add(l);
        return () => vmListeners.delete(l);
      },
    },
    tasks: {
      get: (id: string) => structuredClone(tasks.get(id)?.task),
      subscribe(l: TaskListener) {
        taskListeners.add(l);
        return () => taskListeners.delete(l);
      },
    },
    setPhase(phase: ObservedVm["phase"]) {
      vm.phase = phase;
      for (const l of vmListeners) l({ ...vm }, false);
    },
    setTask(id: string, status: AgentTask["status"], progress: string | null = null) {
      const e = tasks.get(id) ?? {
        version: 0,
        task: {
          id,
          op: "vm.create",
          vm_id: VM_ID,
          status,
          error: null,
          progress: null,
          result: null,
          timings: {},
          created_at: new Date().toISOString(),
          updated_at: new Date().toISOString(),
        } satisfies AgentTask,
      };
      e.task.status = status;
      e.task.progress = progress;
      e.version++;
      tasks.set(id, e);
      for (const l of taskListeners) l(structuredClone(e.task), e.version);
    },
  };
}

/** A sender whose calls the test settles one by one. */
function heldSender() {
  const calls: { report: NodeReport; settle(ok: boolean): void }[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  return {
    calls,
    get maxInFlight() {
      return maxInFlight;
    },
    send: (report: NodeReport) =>
      new Promise<void>((resolve, reject) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        calls.push({
          report,
          settle(ok) {
            inFlight--;
            if (ok) resolve();
            else reject(new Error("HTTP 503 store_unavailable: try again"));
          },
        });
      }),
  };
}

/**
 * One turn of the event loop: urgent reports leave from a microtask, so by then any report the
 * changes made so far would trigger has been handed to the sender.
 */
const macrotask = () => new Promise((r) => setTimeout(r, 0));

const summary = (r: NodeReport) => ({
  phase: r.vms[0]?.phase,
  tasks: r.tasks.map((t) => `${t.id}:${t.status}`),
});

Deno.test("report: urgent at once, others coalesced, one in flight, retried until acknowledged", async (t) => {
  const src = sources();
  const sender = heldSender();
  const { log, lines } = memoryLogger();
  const reporter = startReporter({
    nodeName: "node-a",
    vms: src.vms,
    tasks: src.tasks,
    log,
    send: sender.send,
    coalesceMs: 60_000, // never fires in this test: only urgent changes flush
    initialBackoffMs: 10,
  });
  const nth = (n: number) => waitUntil(() => sender.calls.length >= n, 5000, `report #${n}`);
  try {
    await t.step("the first report (the VM list) goes out at once", async () => {
      await nth(1);
      assertEquals(summary(sender.calls[0].report), { phase: "creating", tasks: [] });
      assertEquals(sender.calls[0].report.node_name, "node-a");
    });

    await t.step("changes during a report wait for it, then go out together", async () => {
      src.setTask(T1, "pending");
      src.setTask(T1, "running", "downloading image");
      src.setPhase("running");
      src.setTask(T1, "succeeded");
      await macrotask();
      assertEquals(sender.calls.length, 1, "a second report while one is in flight");
      sender.calls[0].settle(true);
      await nth(2);
      assertEquals(summary(sender.calls[1].report), {
        phase: "running",
        tasks: [`${T1}:succeeded`],
      });
      assertEquals(sender.maxInFlight, 1);
    });

    await t.step("non-urgent task changes are held until an urgent one", async () => {
      sender.calls[1].settle(true);
      await waitUntil(() => reporter.sent === 2, 5000, "the ack");
      src.setTask(T2, "pending");
      src.setTask(T2, "running", "fetching image");
      await macrotask();
      assertEquals(sender.calls.length, 2, "coalesced changes were sent early");
      src.setPhase("stopping"); // urgent: carries the held task too
      await nth(3);
      assertEquals(summary(sender.calls[2].report), {
        phase: "stopping",
        tasks: [`${T2}:running`],
      });
    });

    await t.step("a failed report is retried with the unacknowledged tasks", async () => {
      sender.calls[2].settle(false);
      await nth(4); // after the 10 ms backoff
      assertEquals(summary(sender.calls[3].report), {
        phase: "stopping",
        tasks: [`${T2}:running`],
      });
      assert(lines.some((l) => l.includes("report: failed")));
      src.setTask(T2, "succeeded"); // changes during the retry ride along right after it
      sender.calls[3].settle(true);
      await nth(5);
      assertEquals(summary(sender.calls[4].report), {
        phase: "stopping",
        tasks: [`${T2}:succeeded`],
      });
      sender.calls[4].settle(true);
      await waitUntil(() => reporter.sent === 4, 5000, "the acks");
      assert(lines.some((l) => l.includes("report: delivered again")));
    });

    await t.step("acknowledged tasks are not sent again", async () => {
      src.setPhase("stopped");
      await nth(6);
      assertEquals(summary(sender.calls[5].report), { phase: "stopped", tasks: [] });
      sender.calls[5].settle(true);
    });
  } finally {
    await reporter.stop();
  }
});
