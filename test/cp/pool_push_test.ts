/** The provisioner's background push queue (cp/pools/push.ts): bounded, coalescing. */
import { assertEquals } from "../assert.ts";
import { PushQueue } from "../../cp/pools/push.ts";

Deno.test("push queue: bounded concurrency, one push per node at a time, coalesced", async (t) => {
  const started: string[] = [];
  const gates = new Map<string, () => void>();
  let running = 0;
  let peak = 0;
  const q = new PushQueue((node) => {
    started.push(node);
    running++;
    peak = Math.max(peak, running);
    return new Promise<void>((resolve) => {
      gates.set(node + "#" + started.filter((n) => n === node).length, () => {
        running--;
        resolve();
      });
    });
  }, 2);
  const release = async (key: string) => {
    gates.get(key)!();
    await new Promise((r) => setTimeout(r, 0));
  };

  await t.step("at most `max` run; the rest wait in order", () => {
    for (const n of ["a", "b", "c", "d"]) q.request(n);
    assertEquals(started, ["a", "b"]);
  });

  await t.step(
    "a request for a waiting node is merged; for a running one, runs once after",
    async () => {
      q.request("c"); // waiting: merged
      q.request("a"); // running: once more afterwards
      q.request("a");
      await release("a#1");
      assertEquals(started, ["a", "b", "c"]);
      await release("b#1");
      assertEquals(started, ["a", "b", "c", "d"]);
      await release("c#1");
      assertEquals(started, ["a", "b", "c", "d", "a"], "a again, once");
      await release("d#1");
      await release("a#2");
      await q.idle();
      assertEquals(peak, 2);
      assertEquals(started.length, 5);
    },
  );

  await t.step("a failing push does not stop the queue", async () => {
    const tried: string[] = [];
    const bad = new PushQueue((n) => {
      tried.push(n);
      return Promise.reject(new Error("unreachable"));
    }, 1);
    bad.request("x");
    bad.request("y");
    await bad.idle();
    assertEquals(tried, ["x", "y"]);
  });
});
