/**
 * cloud-init readiness from the serial log (agent/cloud_init.ts): the line rules on real
 * cloud-init console output, the scanner on chunks split anywhere, and the watcher on a real
 * file appended to like QEMU does — a new boot ignores the previous boot's lines, an agent
 * restart resumes from `cloud_init.json`, a trimmed log is followed. Clock injected; every
 * wait is a poll the test drives.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import {
  CLOUD_INIT_STATE_FILE,
  CloudInitScanner,
  CloudInitWatcher,
  lineVerdict,
  MAX_LINE_BYTES,
} from "../../agent/cloud_init.ts";
import { createLogger } from "../../shared/log.ts";

const FINAL_UBUNTU =
  "[   15.523416] cloud-init[723]: Cloud-init v. 23.1.2-0ubuntu0~22.04.1 finished at Thu, " +
  "01 Jun 2023 10:00:00 +0000. Datasource DataSourceNoCloud [seed=/dev/sr0][dsmode=net].  " +
  "Up 15.49 seconds";
const FAILED_MODULE =
  "[   14.1] cloud-init[700]: 2023-06-01 10:00:00,000 - util.py[WARNING]: Failed to run module " +
  "scripts-user (scripts in /var/lib/cloud/instance/scripts)";
const FINAL_TEST =
  "Cloud-init v. 0.0-otherix-test finished at Mon, 30 Nov 2026 08:00:00 +0000. Datasource " +
  "DataSourceNoCloud.";
const enc = (s: string) => new TextEncoder().encode(s);
const T0 = new Date("2026-11-30T08:00:00.000Z");

Deno.test("cloud-init lines: final, error, and everything else", () => {
  assertEquals(lineVerdict(FINAL_UBUNTU), "done");
  assertEquals(lineVerdict(FINAL_TEST), "done");
  assertEquals(lineVerdict(FAILED_MODULE), "error");
  assertEquals(
    lineVerdict("Cloud-init v. 24.1 running 'modules:final' at Mon, 01 Jan. ERROR: x"),
    "error",
  );
  for (
    const other of [
      "Cloud-init v. 23.1 running 'init' at Thu, 01 Jun 2023 10:00:00 +0000. Up 9.1 seconds.",
      "ci-info: +++++++++++++++Net device info++++++++++++++++",
      "otherix-test-image: marker=finished at",
      "login: ",
    ]
  ) assertEquals(lineVerdict(other), null, other);
});

Deno.test("cloud-init scanner: lines split across chunks, ANSI and CR removed, error is final", () => {
  const s = new CloudInitScanner();
  const bytes = enc(`boot\r\n\x1b[0;32m${FINAL_TEST.slice(0, 30)}`);
  assertEquals(s.feed(bytes.subarray(0, 3), T0), false);
  assertEquals(s.feed(bytes.subarray(3), T0), false, "no newline yet");
  assertEquals(s.condition.status, "pending");
  assertEquals(s.feed(enc(`${FINAL_TEST.slice(30)}\x1b[0m\r\n`), T0), true);
  assertEquals(s.condition, { status: "done", detail: FINAL_TEST, at: T0.toISOString() });
  assertEquals(s.feed(enc(FINAL_TEST + "\n"), T0), false, "a second final line changes nothing");

  const e = new CloudInitScanner();
  assertEquals(e.feed(enc(`${FAILED_MODULE}\n${FINAL_UBUNTU}\n`), T0), true);
  assertEquals(e.condition.status, "error");
  assertEquals(e.condition.detail, FAILED_MODULE);

  const long = new CloudInitScanner();
  long.feed(enc("x".repeat(MAX_LINE_BYTES * 3)), T0);
  long.feed(enc(`${FINAL_TEST}\n`), T0);
  assertEquals(long.condition.status, "pending", "the final line was past the cut of a long line");
  long.feed(enc(`${FINAL_TEST}\n`), T0);
  assertEquals(long.condition.status, "done");
});

Deno.test("cloud-init watcher: per boot, persisted, resumed, trimmed logs followed", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-ci-" });
  const serialLog = join(dir, "serial.log");
  const stateFile = join(dir, CLOUD_INIT_STATE_FILE);
  const id = crypto.randomUUID();
  const changes: string[] = [];
  const watcher = (): CloudInitWatcher =>
    new CloudInitWatcher({
      log: createLogger("test", "error"),
      stateFile,
      onChange: (vm) => changes.push(vm),
      now: () => T0,
    });
  const append = (s: string) => Deno.writeTextFile(serialLog, s, { append: true });
  try {
    const w = watcher();

    await t.step(
      "a boot starts pending at the log's end: the last boot's lines do not count",
      async () => {
        await append(`old boot\n${FINAL_TEST}\n`);
        await w.boot(id, serialLog);
        assertEquals(w.condition(id)?.status, "pending");
        await w.poll();
        assertEquals(w.condition(id)?.status, "pending");
        const state = JSON.parse(await Deno.readTextFile(stateFile))[id];
        assertEquals(state.condition.status, "pending");
        assert(state.boot_offset > 0);
      },
    );

    await t.step("the final line makes it done, announced once", async () => {
      changes.length = 0;
      await append("Booting\nlogin: ");
      await w.poll();
      assertEquals(changes, []);
      await append(`\n${FINAL_TEST}\n`);
      await w.poll();
      assertEquals(w.condition(id), { status: "done", detail: FINAL_TEST, at: T0.toISOString() });
      assertEquals(changes, [id]);
      await w.poll();
      assertEquals(changes, [id]);
    });

    await t.step("an agent restart resumes: done stays done without reading again", () => {
      const w2 = watcher();
      w2.resume(id, serialLog);
      assertEquals(w2.condition(id)?.status, "done");
    });

    await t.step("a new boot with an error line is error, and stays so", async () => {
      await w.boot(id, serialLog);
      assertEquals(w.condition(id)?.status, "pending");
      await append(`${FAILED_MODULE}\n`);
      await w.poll();
      await append(`${FINAL_UBUNTU}\n`);
      await w.poll();
      assertEquals(w.condition(id)?.status, "error");
      assertEquals(w.condition(id)?.detail, FAILED_MODULE);
    });

    await t.step(
      "a pending boot resumed after a restart reads from where the boot began",
      async () => {
        await w.boot(id, serialLog);
        await append(`half-way\n${FINAL_TEST}\n`); // written while "the agent was down"
        const w3 = watcher();
        w3.resume(id, serialLog);
        assertEquals(w3.condition(id)?.status, "pending");
        await w3.poll();
        assertEquals(w3.condition(id)?.status, "done");
      },
    );

    await t.step("a log trimmed below the read offset is followed from its new end", async () => {
      await w.boot(id, serialLog);
      await append("x".repeat(10_000) + "\n");
      await w.poll();
      await Deno.writeTextFile(serialLog, "kept tail\n"); // what the trimmer leaves
      await w.poll();
      await append(`${FINAL_TEST}\n`);
      await w.poll();
      assertEquals(w.condition(id)?.status, "done");
    });

    await t.step("forgotten VMs are no longer reported, nor kept in the state file", async () => {
      w.forget(id);
      assertEquals(w.condition(id), undefined);
      await w.start(60_000).stop(); // waits for the state file's writes
      assertEquals(JSON.parse(await Deno.readTextFile(stateFile)), {});
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
