/**
 * SingleFlight (agent/single_flight.ts) with work that the test finishes by hand: sharing,
 * progress replay, errors for everyone, cancellation by reference count.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { SingleFlight } from "../../agent/single_flight.ts";

/** Work the test controls: records its runs and settles when told. */
function controlledWork() {
  const runs: { signal: AbortSignal; progress: (p: number) => void }[] = [];
  let settle: { resolve: (v: string) => void; reject: (e: unknown) => void } | null = null;
  let cleanedUp = false;
  const work = (ctx: { signal: AbortSignal; progress: (p: number) => void }) => {
    runs.push(ctx);
    return new Promise<string>((resolve, reject) => {
      settle = { resolve, reject };
      ctx.signal.addEventListener("abort", () => {
        // Winds down asynchronously, like a download removing its temp file.
        setTimeout(() => {
          cleanedUp = true;
          reject(ctx.signal.reason);
        }, 0);
      });
    });
  };
  return {
    work,
    runs,
    resolve: (v: string) => settle!.resolve(v),
    reject: (e: unknown) => settle!.reject(e),
    get cleanedUp() {
      return cleanedUp;
    },
  };
}

Deno.test("SingleFlight: shares a run, replays progress, settles everyone", async (t) => {
  await t.step("callers of one key share one run; one leader", async () => {
    const sf = new SingleFlight<string, number>();
    const w = controlledWork();
    const seenA: number[] = [];
    const seenB: number[] = [];
    const a = sf.run("k", w.work, { onProgress: (p) => seenA.push(p) });
    w.runs[0].progress(10);
    const b = sf.run("k", w.work, { onProgress: (p) => seenB.push(p) });
    assertEquals(seenB, [10], "a late caller gets the last progress at once");
    w.runs[0].progress(20);
    w.resolve("done");
    assertEquals(await a, { value: "done", leader: true });
    assertEquals(await b, { value: "done", leader: false });
    assertEquals([seenA, seenB], [[10, 20], [10, 20]]);
    assertEquals(w.runs.length, 1);
    assertEquals(sf.inFlight, []);
  });

  await t.step("other keys run separately; a settled key starts afresh", async () => {
    const sf = new SingleFlight<string, number>();
    const w1 = controlledWork();
    const w2 = controlledWork();
    const a = sf.run("a", w1.work);
    const b = sf.run("b", w2.work);
    assertEquals(sf.inFlight.sort(), ["a", "b"]);
    w1.resolve("1");
    w2.resolve("2");
    assertEquals([(await a).value, (await b).value], ["1", "2"]);
    const w3 = controlledWork();
    const again = sf.run("a", w3.work);
    w3.resolve("3");
    assertEquals(await again, { value: "3", leader: true });
  });

  await t.step("an error reaches every caller", async () => {
    const sf = new SingleFlight<string, number>();
    const w = controlledWork();
    const a = sf.run("k", w.work);
    const b = sf.run("k", w.work);
    w.reject(new Error("boom"));
    for (const p of [a, b]) assertEquals((await assertRejects(() => p)).message, "boom");
  });
});

Deno.test("SingleFlight: cancellation is reference-counted", async (t) => {
  await t.step("one caller leaves at once; the run goes on for the other", async () => {
    const sf = new SingleFlight<string, number>();
    const w = controlledWork();
    const leaving = new AbortController();
    const a = sf.run("k", w.work, { signal: leaving.signal });
    const b = sf.run("k", w.work);
    leaving.abort(new Error("a cancelled"));
    assertEquals((await assertRejects(() => a)).message, "a cancelled");
    assert(!w.runs[0].signal.aborted);
    w.resolve("ok");
    assertEquals((await b).value, "ok");
  });

  await t.step(
    "the last caller leaving aborts the work and settles after its cleanup",
    async () => {
      const sf = new SingleFlight<string, number>();
      const w = controlledWork();
      const c1 = new AbortController();
      const c2 = new AbortController();
      const a = sf.run("k", w.work, { signal: c1.signal });
      const b = sf.run("k", w.work, { signal: c2.signal });
      c1.abort(new Error("first"));
      await assertRejects(() => a);
      c2.abort(new Error("second"));
      assertEquals(sf.inFlight, [], "forgotten at once: a new call would start afresh");
      assertEquals((await assertRejects(() => b)).message, "second");
      assert(w.cleanedUp, "rejected only after the work wound down");
      assertEquals(w.runs[0].signal.reason.message, "second");
    },
  );

  await t.step("an already aborted signal never starts or joins anything", async () => {
    const sf = new SingleFlight<string, number>();
    const w = controlledWork();
    const err = await assertRejects(() =>
      sf.run("k", w.work, { signal: AbortSignal.abort(new Error("too late")) })
    );
    assertEquals([err.message, w.runs.length], ["too late", 0]);
  });
});
