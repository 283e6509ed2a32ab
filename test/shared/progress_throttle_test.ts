/**
 * The byte-progress throttle (shared/progress_throttle.ts) on an injected clock: which
 * updates of a download are published.
 */
import { assertEquals } from "../assert.ts";
import {
  PROGRESS_MIN_INTERVAL_MS,
  ProgressThrottle,
  sameProgress,
} from "../../shared/progress_throttle.ts";

const MiB = 1024 * 1024;

Deno.test("progress throttle: first, last, 5 % steps and ~4 a second", async (t) => {
  await t.step("a fast download in 1 MiB chunks: first, every 5 % step, last", () => {
    let now = 0;
    const th = new ProgressThrottle(() => now);
    const published: number[] = [];
    for (let done = MiB; done <= 100 * MiB; done += MiB) {
      now += 1; // 1 ms a chunk: far faster than 4 a second
      if (th.offer({ done_bytes: done, total_bytes: 100 * MiB })) published.push(done / MiB);
    }
    // 1 (first), then each multiple of 5 %, including 100 (the last).
    assertEquals(published, [
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
    ]);
  });

  await t.step("a slow download: one update per 250 ms within a step", () => {
    let now = 0;
    const th = new ProgressThrottle(() => now);
    const total = 1000 * MiB;
    const published: number[] = [];
    // 1 MiB every 100 ms: 0.1 % per update, 3 s in all, all inside the first 5 % step.
    for (let i = 1; i <= 30; i++) {
      now = i * 100;
      if (th.offer({ done_bytes: i * MiB, total_bytes: total })) published.push(now);
    }
    assertEquals(published, [100, 400, 700, 1000, 1300, 1600, 1900, 2200, 2500, 2800]);
    assertEquals(PROGRESS_MIN_INTERVAL_MS, 250);
  });

  await t.step("unknown total: time-based only; unchanged figures never", () => {
    let now = 0;
    const th = new ProgressThrottle(() => now);
    const p = (done: number) => ({ done_bytes: done, total_bytes: null });
    assertEquals(th.offer(p(1)), true);
    now = 100;
    assertEquals(th.offer(p(2)), false);
    now = 260;
    assertEquals(th.offer(p(3)), true);
    now = 1000;
    assertEquals(th.offer(p(3)), false, "the same figures again");
  });

  await t.step("reset: the next step's first update is published at once", () => {
    const th = new ProgressThrottle(() => 0);
    assertEquals(th.offer({ done_bytes: 1, total_bytes: 1000 }), true);
    assertEquals(th.offer({ done_bytes: 2, total_bytes: 1000 }), false);
    th.reset();
    assertEquals(th.offer({ done_bytes: 3, total_bytes: 1000 }), true);
  });

  await t.step("sameProgress compares figures, null included", () => {
    assertEquals(sameProgress(null, null), true);
    assertEquals(sameProgress({ done_bytes: 1, total_bytes: null }, null), false);
    assertEquals(
      sameProgress({ done_bytes: 1, total_bytes: 2 }, { done_bytes: 1, total_bytes: 2 }),
      true,
    );
  });
});
