/**
 * Agent tasks: timestamps, change announcements with versions, and which tasks ride along
 * with heartbeats (in flight, or ended within 10 minutes), with an injected clock.
 */
import { assert, assertEquals } from "../assert.ts";
import type { AgentTask } from "../../shared/api/agent.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { RECENT_TASK_WINDOW_MS, TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { memoryLogger, tempRoot } from "./helpers.ts";

Deno.test("tasks: changes are announced with versions; heartbeats carry the recent ones", async (t) => {
  const root = await tempRoot();
  const { log } = memoryLogger();
  const vms = new VmManager({
    paths: agentPaths(root.cfg),
    qemu: root.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 1000 }),
    log,
  });
  await vms.recover();
  let now = 1_000_000;
  const tasks = new TaskManager(vms, log, { clock: () => now });
  const changes: [string, AgentTask["status"], number][] = [];
  tasks.subscribe((task, version) => changes.push([task.id, task.status, version]));
  try {
    // Deleting an unknown VM is a real task that succeeds without QEMU.
    const first = crypto.randomUUID();
    await t.step("a task is announced when accepted, started and ended", async () => {
      const accepted = tasks.submitDelete(crypto.randomUUID(), first);
      assertEquals(accepted.status, "pending");
      assertEquals(accepted.created_at, accepted.updated_at);
      now += 5;
      const done = (await tasks.wait(first))!;
      assertEquals(done.status, "succeeded");
      assert(Date.parse(done.updated_at) >= Date.parse(done.created_at));
      assertEquals(done.timings.done, 5);
      const mine = changes.filter(([id]) => id === first);
      assertEquals(mine.map(([, s]) => s).filter((s, i, a) => a.indexOf(s) === i), [
        "pending",
        "running",
        "succeeded",
      ]);
      const versions = mine.map(([, , v]) => v);
      assertEquals(versions, [...versions].sort((a, b) => a - b));
      assertEquals(tasks.version(first), versions.at(-1));
    });

    await t.step("recent(): ended tasks ride along for 10 minutes, then drop out", async () => {
      assertEquals(tasks.recent().map((x) => x.id), [first]);
      now += RECENT_TASK_WINDOW_MS;
      assertEquals(tasks.recent().map((x) => x.id), [first]); // exactly 10 minutes: still in
      const second = crypto.randomUUID();
      tasks.submitDelete(crypto.randomUUID(), second);
      now += 1;
      assertEquals(tasks.recent().map((x) => x.id), [second]); // in flight, first expired
      await tasks.wait(second);
      assertEquals(tasks.recent().map((x) => x.id), [second]);
      // Still answerable by id after it left the heartbeat window.
      assertEquals(tasks.get(first)?.status, "succeeded");
    });
  } finally {
    await vms.close();
    await root.cleanup();
  }
});
