/**
 * The `--wait` progress renderers (cli/progress.ts) fed task states as the event stream
 * delivers them: plain lines for pipes (a line per 10 % of a download at most) and the
 * `cli-progress` bar on a terminal.
 */
import { assert, assertEquals, assertMatch } from "../assert.ts";
import type { ProgressBytes, Task } from "../../shared/api/tasks.ts";
import {
  bytesLine,
  formatSize,
  PlainProgress,
  progressRenderer,
  stepLabel,
  TtyProgress,
} from "../../cli/progress.ts";
import { fakeIo, taskFixture, uuid } from "./fixtures.ts";

const MiB = 1024 * 1024;
const ID = uuid(50);

function state(status: Task["status"], progress: string | null, bytes?: ProgressBytes): Task {
  return taskFixture({ status, progress, progress_bytes: bytes ?? null });
}

/** A download of `total` bytes reported at each whole percent (as a throttled agent would not). */
function download(total: number | null, steps: number[]): Task[] {
  return steps.map((done) =>
    state("running", `downloading image (${(done / MiB).toFixed(1)} MiB)`, {
      done_bytes: done,
      total_bytes: total,
    })
  );
}

Deno.test("progress: formatting helpers", () => {
  assertEquals(formatSize(512), "512 B");
  assertEquals(formatSize(13_107_200), "12.5 MiB");
  assertEquals(formatSize(300 * MiB), "300.0 MiB");
  assertEquals(formatSize(5 * 1024 * MiB), "5.0 GiB");
  assertEquals(stepLabel("downloading image (12.5 MiB of 300.0 MiB)"), "downloading image");
  assertEquals(stepLabel(null), "downloading");
  assertEquals(
    bytesLine("downloading image", { done_bytes: 13_107_200, total_bytes: 300 * MiB }),
    "downloading image: 12.5 MiB of 300.0 MiB (4%)",
  );
  assertEquals(
    bytesLine("downloading image", { done_bytes: 3 * MiB, total_bytes: null }),
    "downloading image: 3.0 MiB received",
  );
  assert(progressRenderer(fakeIo({ tty: true })) instanceof TtyProgress);
  assert(progressRenderer(fakeIo()) instanceof PlainProgress);
});

Deno.test("progress: plain lines, at most one per 10 % of a download", async (t) => {
  await t.step("a whole create: status lines, the download in 10 % lines, next steps", () => {
    const io = fakeIo();
    const p = new PlainProgress(io);
    const total = 300 * MiB;
    const states = [
      state("pending", null),
      state("running", "fetching image"),
      // 1 % steps: 101 states, but only 11 lines.
      ...download(total, Array.from({ length: 101 }, (_, i) => Math.round((total * i) / 100))),
      state("running", "creating disk"),
      state("succeeded", "running"),
    ];
    for (const s of states) p.task(s);
    p.end();
    assertEquals(io.stderr.split("\n"), [
      `task=${ID} status=pending`,
      `task=${ID} status=running: fetching image`,
      `task=${ID} status=running: downloading image`,
      "downloading image: 0 B of 300.0 MiB (0%)",
      "downloading image: 30.0 MiB of 300.0 MiB (10%)",
      "downloading image: 60.0 MiB of 300.0 MiB (20%)",
      "downloading image: 90.0 MiB of 300.0 MiB (30%)",
      "downloading image: 120.0 MiB of 300.0 MiB (40%)",
      "downloading image: 150.0 MiB of 300.0 MiB (50%)",
      "downloading image: 180.0 MiB of 300.0 MiB (60%)",
      "downloading image: 210.0 MiB of 300.0 MiB (70%)",
      "downloading image: 240.0 MiB of 300.0 MiB (80%)",
      "downloading image: 270.0 MiB of 300.0 MiB (90%)",
      "downloading image: 300.0 MiB of 300.0 MiB (100%)",
      `task=${ID} status=running: creating disk`,
      `task=${ID} status=succeeded`,
      "",
    ]);
    assertEquals(p.lastStatus, "succeeded");
  });

  await t.step("figures that skip the end: 100 % is printed once the task moves on", () => {
    const io = fakeIo();
    const p = new PlainProgress(io);
    for (const s of download(10 * MiB, [MiB, 5 * MiB, 9.5 * MiB])) p.task(s);
    p.task(state("running", "creating disk"));
    assertEquals(io.stderr.split("\n").filter((l) => l.startsWith("downloading image:")), [
      "downloading image: 1.0 MiB of 10.0 MiB (10%)",
      "downloading image: 5.0 MiB of 10.0 MiB (50%)",
      "downloading image: 9.5 MiB of 10.0 MiB (95%)",
      "downloading image: 10.0 MiB of 10.0 MiB (100%)",
    ]);
  });

  await t.step("a download that fails: no 100 %", () => {
    const io = fakeIo();
    const p = new PlainProgress(io);
    for (const s of download(10 * MiB, [MiB, 3 * MiB])) p.task(s);
    p.task(taskFixture({
      status: "failed",
      progress: "downloading image",
      error: { code: "download_failed", message: "download x: truncated" },
    }));
    assert(!io.stderr.includes("(100%)"), io.stderr);
    assert(io.stderr.endsWith(`task=${ID} status=failed\n`), io.stderr);
  });

  await t.step("unknown total: a line each time the received bytes double", () => {
    const io = fakeIo();
    const p = new PlainProgress(io);
    const steps = Array.from({ length: 40 }, (_, i) => (i + 1) * MiB); // 1..40 MiB
    for (const s of download(null, steps)) p.task(s);
    assertEquals(io.stderr.split("\n").filter((l) => l.startsWith("downloading image:")), [
      "downloading image: 1.0 MiB received",
      "downloading image: 2.0 MiB received",
      "downloading image: 4.0 MiB received",
      "downloading image: 8.0 MiB received",
      "downloading image: 16.0 MiB received",
      "downloading image: 32.0 MiB received",
    ]);
  });
});

/** Removes cursor and line control sequences: what a terminal ends up showing, roughly. */
function frames(out: string): string[] {
  // deno-lint-ignore no-control-regex
  return out.split(/\x1b\[1G/).map((f) => f.replace(/\x1b(\[[0-9;?]*[A-Za-z]|[78])/g, ""));
}

Deno.test("progress: a cli-progress bar on a terminal", async (t) => {
  await t.step("dots, then the bar redrawn in place, completed, then dots again", () => {
    const io = fakeIo({ tty: true });
    const p = new TtyProgress(io, { columns: 100, fps: 1000 });
    p.task(state("pending", null));
    p.tick(); // keep-alive
    p.task(state("running", "fetching image"));
    for (const s of download(300 * MiB, [0, 30 * MiB, 150 * MiB, 285 * MiB])) p.task(s);
    p.tick(); // the bar redraws itself: no dot
    p.task(state("running", "creating disk"));
    p.task(state("succeeded", "running"));
    p.end();
    const out = io.stderr;
    assert(out.startsWith("...\n"), JSON.stringify(out)); // three dots, then the bar's line
    const bars = frames(out).filter((f) => f.startsWith("downloading image ["));
    assertMatch(bars[0], /^downloading image \[░{24}\] 0% \| 0 B of 300\.0 MiB \| ETA: /);
    assertMatch(
      bars.find((b) => b.includes(" 50% "))!,
      /^downloading image \[█{12}░{12}\] 50% \| 150\.0 MiB of 300\.0 MiB/,
    );
    // The task moved on: the bar ends at 100 %, on its own line.
    assertMatch(
      bars.at(-1)!,
      /^downloading image \[█{24}\] 100% \| 300\.0 MiB of 300\.0 MiB \| ETA: 0s\n\.\.\n$/,
    );
    assert(out.endsWith("..\n"), JSON.stringify(out.slice(-40)));
  });

  await t.step("a failed download keeps its last figures", () => {
    const io = fakeIo({ tty: true });
    const p = new TtyProgress(io, { fps: 1000 });
    for (const s of download(100 * MiB, [10 * MiB, 40 * MiB])) p.task(s);
    p.task(taskFixture({ status: "failed", error: { code: "download_failed", message: "x" } }));
    p.end();
    const bars = frames(io.stderr).filter((f) => f.startsWith("downloading image ["));
    assertMatch(bars.at(-1)!, /\] 40% \| 40\.0 MiB of 100\.0 MiB/);
    assert(!io.stderr.includes("100%"));
  });

  await t.step("an unknown total: the bytes received, no bar", () => {
    const io = fakeIo({ tty: true });
    const p = new TtyProgress(io, { fps: 1000 });
    for (const s of download(null, [MiB, 7 * MiB])) p.task(s);
    p.end();
    const shown = frames(io.stderr).filter((f) => f.startsWith("downloading image"));
    assertMatch(shown.at(-1)!, /^downloading image: 7\.0 MiB received\n$/);
  });
});
