/**
 * Durable tasks (cp/tasks/worker.ts): claims under a store lease, fenced writes, take-over
 * after a worker dies, and the guarantee that two workers — two loops in one process and two
 * store handles as two control-plane processes would have — never run one task at once.
 */
import { assert, assertEquals } from "../assert.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { keys, type TaskRecord } from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store } from "../../cp/store/store.ts";
import { enqueueOps, newTask } from "../../cp/tasks/queue.ts";
import { type TaskHandler, TaskRegistry } from "../../cp/tasks/registry.ts";
import { startWorker } from "../../cp/tasks/worker.ts";
import { createLogger } from "../../shared/log.ts";
import { until } from "./fixtures.ts";

function ctxOn(store: Store, dir: string): CpContext {
  return {
    cfg: parseApiConfig(`store:\n  data_dir: ${dir}\nworkers:\n  poll_interval_ms: 50\n`),
    log: createLogger("api", "error"),
    store,
    pki: { replicaName: "test" } as CpContext["pki"],
    jwtSecret: new Uint8Array(32),
    agents: {} as CpContext["agents"],
    now: () => new Date(),
  };
}

/** A handler that records overlapping runs of one task and finishes after `holdMs`. */
function recordingHandler(log: { starts: string[]; overlaps: string[] }, holdMs: number) {
  const inFlight = new Set<string>();
  const handler: TaskHandler = {
    types: ["vm.start"],
    async run(rt) {
      const id = rt.task.id;
      if (inFlight.has(id)) log.overlaps.push(id);
      inFlight.add(id);
      log.starts.push(id);
      try {
        await new Promise((r) => setTimeout(r, holdMs));
        await rt.finish(null);
      } finally {
        inFlight.delete(id);
      }
    },
  };
  return handler;
}

async function queueTasks(store: Store, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const t = newTask("vm.start", { name: `vm-${i}`, id: crypto.randomUUID() }, new Date());
    await store.txn({ compare: [], success: enqueueOps(t) });
    ids.push(t.id);
  }
  return ids;
}

async function allSucceeded(store: Store, ids: string[]): Promise<TaskRecord[] | null> {
  const ts = await Promise.all(
    ids.map(async (id) => (await store.get<TaskRecord>(keys.task(id)))?.value),
  );
  return ts.every((t) => t?.status === "succeeded") ? ts as TaskRecord[] : null;
}

Deno.test("worker: two workers on one store never run one task twice", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-worker-" });
  const a = await openKvStore(`${dir}/store.kv`);
  const b = await openKvStore(`${dir}/store.kv`); // a second process's handle
  try {
    for (
      const [label, storeA, storeB] of [
        ["two loops, one handle", a, a],
        ["two handles (two control-plane processes)", a, b],
      ] as const
    ) {
      await t.step(label, async () => {
        const log = { starts: [] as string[], overlaps: [] as string[] };
        const handler = recordingHandler(log, 20);
        const w1 = await startWorker(ctxOn(storeA, dir), new TaskRegistry().register(handler), {
          id: "w1",
        });
        const w2 = await startWorker(ctxOn(storeB, dir), new TaskRegistry().register(handler), {
          id: "w2",
        });
        try {
          const ids = await queueTasks(a, 30);
          const done = await until("all tasks succeeded", () => allSucceeded(a, ids), 30_000);
          assertEquals(log.overlaps, [], "no task ran on two workers at once");
          assertEquals(new Set(log.starts).size, ids.length);
          assertEquals(log.starts.length, ids.length, "each task ran exactly once");
          assert(done.every((t) => t.attempts === 1), "one claim each");
          assertEquals((await a.range(keys.activeTasks)).kvs, []);
          assertEquals((await a.range(keys.taskClaims)).kvs, [], "claims released");
        } finally {
          await w1.stop();
          await w2.stop();
        }
      });
    }

    await t.step("a worker that dies loses its claims; another takes its task over", async () => {
      let blockFirst = true;
      const runs: string[] = [];
      const hanging: TaskHandler = {
        types: ["vm.start"],
        async run(rt) {
          runs.push(rt.task.id);
          if (blockFirst) {
            blockFirst = false;
            // Never finishes: the process "dies" while running it.
            await new Promise((_r, reject) =>
              rt.signal.addEventListener("abort", () => reject(rt.signal.reason), { once: true })
            );
          }
          await rt.finish(null);
        },
      };
      const ctx1 = ctxOn(a, dir);
      const dead = await startWorker(ctx1, new TaskRegistry().register(hanging), {
        id: "dead",
        leaseTtlSeconds: 1,
      });
      const [id] = await queueTasks(a, 1);
      await until("claimed by the first worker", () => runs.length === 1);
      const claim = await a.get<{ worker: string }>(keys.taskClaim(id));
      assertEquals(claim?.value.worker, "dead");
      await dead.crash(); // no release: the claim goes away with the lease only
      const heir = await startWorker(ctxOn(b, dir), new TaskRegistry().register(hanging), {
        id: "heir",
        leaseTtlSeconds: 1,
      });
      try {
        const [task] = (await until("taken over", () => allSucceeded(a, [id]), 15_000))!;
        assertEquals(task.attempts, 2, "the take-over counts as a second attempt");
        assertEquals(runs, [id, id]);
      } finally {
        await heir.stop();
      }
    });

    await t.step("a worker whose claim is gone cannot write the task", async () => {
      let stale: (() => Promise<boolean>) | null = null;
      const h: TaskHandler = {
        types: ["vm.start"],
        async run(rt) {
          // Someone else removes the claim (as lease expiry would) before the finish.
          await a.delete(keys.taskClaim(rt.task.id));
          stale = () => rt.finish(null);
          await rt.finish(null);
        },
      };
      const w = await startWorker(ctxOn(a, dir), new TaskRegistry().register(h), { id: "w" });
      try {
        const [id] = await queueTasks(a, 1);
        await until("handler ran", () => stale !== null);
        const task = (await a.get<TaskRecord>(keys.task(id)))!.value;
        assert(task.status !== "succeeded", "the fenced finish did not write");
      } finally {
        await w.stop();
      }
    });
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});
