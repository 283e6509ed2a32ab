/**
 * Byte progress through the task worker (cp/tasks/worker.ts `rt.progress`): a download's
 * figures reach the stored task, throttled on the control plane's clock, and are cleared by
 * the next step and at the end. Store writes are counted at the store interface.
 */
import { assertEquals } from "../assert.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { keys, type TaskRecord } from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store, TxnRequest } from "../../cp/store/store.ts";
import { enqueueOps, newTask } from "../../cp/tasks/queue.ts";
import { type TaskHandler, TaskRegistry } from "../../cp/tasks/registry.ts";
import { startWorker } from "../../cp/tasks/worker.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { createLogger } from "../../shared/log.ts";
import { until } from "./fixtures.ts";

const MiB = 1024 * 1024;

/** `store` with every task record it is asked to put recorded in `puts`. */
function countingStore(store: Store, puts: TaskRecord[]): Store {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === "txn") {
        return (req: TxnRequest) => {
          for (const op of req.success) {
            if (op.type === "put" && op.key.startsWith(keys.task(""))) {
              puts.push(op.value as TaskRecord);
            }
          }
          return target.txn(req);
        };
      }
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

Deno.test("task progress: byte figures are written throttled, then cleared", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-progress-" });
  const store = await openKvStore(`${dir}/store.kv`);
  const puts: TaskRecord[] = [];
  let nowMs = Date.parse("2026-05-12T20:00:00.000Z");
  const ctx: CpContext = {
    cfg: parseApiConfig(`store:\n  data_dir: ${dir}\nworkers:\n  poll_interval_ms: 50\n`),
    log: createLogger("api", "error"),
    store: countingStore(store, puts),
    pki: { replicaName: "test" } as CpContext["pki"],
    jwtSecret: new Uint8Array(32),
    agents: {} as CpContext["agents"],
    now: () => new Date(nowMs),
  };
  // A download of 100 MiB reported in 1 MiB steps, 1 ms apart on the injected clock (as a
  // fast download through the agent's reports would), then the next step.
  const handler: TaskHandler = {
    types: ["vm.start"],
    async run(rt) {
      await rt.progress("fetching image");
      for (let i = 1; i <= 100; i++) {
        nowMs += 1;
        await rt.progress(`downloading image (${i}.0 MiB of 100.0 MiB)`, {
          done_bytes: i * MiB,
          total_bytes: 100 * MiB,
        });
      }
      nowMs += 1000; // a slow step: its next figures would be written by time alone
      await rt.progress("downloading image (100.0 MiB of 100.0 MiB)", {
        done_bytes: 100 * MiB,
        total_bytes: 100 * MiB,
      }); // unchanged: not written
      await rt.progress("creating disk");
      await rt.finish(null);
    },
  };
  const task = newTask("vm.start", { name: "vm-1", id: crypto.randomUUID() }, new Date(nowMs));
  await store.txn({ compare: [], success: enqueueOps(task) });
  const worker = await startWorker(ctx, new TaskRegistry().register(handler), { id: "w" });
  try {
    const done = await until("the task to succeed", async () => {
      const t = (await store.get<TaskRecord>(keys.task(task.id)))?.value;
      return t?.status === "succeeded" ? t : null;
    });
    const mine = puts.filter((p) => p.id === task.id);
    const progressWrites = mine.filter((p) => !isTerminal(p.status));
    const mib = progressWrites.map((p) =>
      p.progress_bytes ? p.progress_bytes.done_bytes / MiB : p.progress
    );
    // The claim has no progress yet; then the text, the first figures, every 5 % step (100 %
    // included; 100 chunks in 100 ms would otherwise be 100 writes), the next step without
    // figures, and nothing for the repeated 100 %.
    assertEquals(mib, [
      null,
      "fetching image",
      1,
      5,
      10,
      15,
      20,
      25,
      30,
      35,
      40,
      45,
      50,
      55,
      60,
      65,
      70,
      75,
      80,
      85,
      90,
      95,
      100,
      "creating disk",
    ]);
    const last100 = progressWrites.find((p) => p.progress_bytes?.done_bytes === 100 * MiB)!;
    assertEquals(last100.progress, "downloading image (100.0 MiB of 100.0 MiB)");
    assertEquals(last100.progress_bytes, { done_bytes: 100 * MiB, total_bytes: 100 * MiB });
    assertEquals(done.progress_bytes, null);
  } finally {
    await worker.stop();
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
