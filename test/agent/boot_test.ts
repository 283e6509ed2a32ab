/**
 * The offline test image (scripts/build-test-image.sh, via test/test_image.ts) booted under
 * TCG through the agent's own pipeline (image cache → qcow2 overlay → NoCloud seed → QEMU),
 * and everything that needs a real guest, in as few boots as possible (each costs 7–30 s of
 * a core): the seed reaches the guest, the serial log stays capped for a chatty guest, the
 * guest powering itself off (`guest-shutdown`), a reboot and a stop through the ACPI power
 * button, and a stop forced while the kernel is still loading.
 *
 * ACPI: the image handles the power button once its build script runs `acpid`; an image
 * without it ignores the button, and then reboot is checked in its timeout path (reset).
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import type { ObservedVm } from "../../shared/api/vm_runtime.ts";
import type { VmAction } from "../../shared/api/tasks.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { ensureTestImage } from "../test_image.ts";
import { killQemus, memoryLogger, serveFiles, tempRoot, waitGone, waitUntil } from "./helpers.ts";

const IMAGE_HANDLES_ACPI = (await Deno.readTextFile(`${REPO_ROOT}/scripts/build-test-image.sh`))
  .includes("acpid");

/** How long a TCG boot to the login prompt may take on a busy 2-core machine, ms. */
const BOOT_MS = 240_000;

Deno.test("boot: the test image under TCG: seed, capped serial log, guest power-off, ACPI", async (t) => {
  const image = await ensureTestImage();
  const cap = 64 * 1024;
  const root = await tempRoot(`qemu:\n  accelerator: tcg\n  serial_log_max_bytes: ${cap}\n`);
  const http = serveFiles(new Map([["/otherix-test.img", await Deno.readFile(image.path)]]));
  const paths = agentPaths(root.cfg);
  const { log } = memoryLogger();
  const vms = new VmManager({
    paths,
    qemu: root.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 10_000 }),
    log,
  });
  const tasks = new TaskManager(vms, log);
  const id = crypto.randomUUID();
  const changes: ObservedVm[] = [];
  vms.subscribe((vm) => vm.id === id && changes.push(vm));
  const enc = new TextEncoder();

  /** Serial log bytes so far (the next boot's output comes after). */
  const logSize = async () => (await Deno.stat(vms.files(id).serialLog)).size;
  /** Waits for `text` in the serial log after byte `from`. */
  const waitSerial = async (text: string, from: number, ms = BOOT_MS) => {
    const t0 = performance.now();
    await waitUntil(
      async () => {
        const bytes = await Deno.readFile(vms.files(id).serialLog);
        return new TextDecoder().decode(bytes.subarray(from)).includes(text);
      },
      ms,
      `"${text}" on the serial console`,
    );
    return Math.round(performance.now() - t0);
  };
  /**
   * Types `line` and Enter on the guest's serial console and stays connected (reading and
   * dropping the echo) until `done()` holds: QEMU takes typed bytes only as fast as the guest's
   * UART drains them, and drops what is still unread when the client hangs up.
   */
  const type = async (line: string, done: () => Promise<boolean> | boolean, what: string) => {
    const conn = await Deno.connect({ transport: "unix", path: vms.consoleTarget(id).serialSock });
    const drain = (async () => {
      const buf = new Uint8Array(64 * 1024);
      try {
        while ((await conn.read(buf)) !== null) { /* discard */ }
      } catch { /* closed */ }
    })();
    try {
      await conn.write(enc.encode(line + "\n"));
      await waitUntil(done, 60_000, what);
    } finally {
      try {
        conn.close();
      } catch { /* QEMU exited */ }
      await drain;
    }
  };
  /** A predicate: `text` appeared in the serial log after byte `from`. */
  const logged = (text: string, from: number) => async () =>
    new TextDecoder().decode((await Deno.readFile(vms.files(id).serialLog)).subarray(from))
      .includes(text);
  const loginAsRoot = async () => {
    await type("root", logged("/root #", await logSize()), "a shell prompt");
  };
  const act = async (action: VmAction, extra: { timeout_seconds?: number } = {}) => {
    const taskId = crypto.randomUUID();
    tasks.submitAction(id, { task_id: taskId, action, ...extra });
    const task = (await tasks.wait(taskId))!;
    assertEquals(task.status, "succeeded", JSON.stringify(task.error));
    return task;
  };

  try {
    await vms.recover();
    let pid = 0;
    let rebootFrom = 0;
    await t.step(
      "boot 1: create → running; the guest prints the seed's hostname and marker",
      async () => {
        const taskId = crypto.randomUUID();
        tasks.submitCreate({
          task_id: taskId,
          vm: {
            id,
            name: "boot-check",
            image_url: `${http.base}/otherix-test.img`,
            image_sha256: image.sha256,
            architecture: "amd64",
            vcpus: 1,
            memory_mb: 256,
            disk_gib: 1,
            user_data: "#cloud-config\n# otherix-marker: agent-seed-ok\n",
          },
          pool: { name: "default", path: `${paths.poolsDir}/default` },
        });
        const task = (await tasks.wait(taskId))!;
        assertEquals(task.status, "succeeded", JSON.stringify(task.error));
        assertEquals(task.result?.image_format, "raw");
        const loginMs = await waitSerial("login:", 0);
        console.log(
          `create timings ${JSON.stringify(task.timings)} ms; login prompt after ${loginMs} ms`,
        );
        const text = await vms.consoleLog(id, 64 * 1024);
        assertStringIncludes(text, "otherix-test-image: hostname=boot-check");
        assertStringIncludes(text, "otherix-test-image: marker=agent-seed-ok");
        pid = vms.get(id)!.pid!;
      },
    );

    await t.step("pause and resume a booted guest: same QEMU", async () => {
      assertEquals((await act("pause")).result, { phase: "paused" });
      assertEquals((await act("resume")).result, { phase: "running" });
      assertEquals(vms.get(id)?.pid, pid);
    });

    await t.step("a chatty guest's serial log stays capped (logappend=on + trimming)", async () => {
      await loginAsRoot();
      // A background loop printing 30 000 numbered lines (≈ 1.3 MiB) to ttyS0, then a marker:
      // while it floods the console the shell hardly gets to read what is typed.
      const lines = 30_000; // outlasts the measurement below (16 × 64 KiB ≈ 23 300 lines)
      const from = await logSize();
      await type(
        `(i=0; while [ $i -lt ${lines} ]; do i=$((i+1)); ` +
          'echo "spam $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; done; echo "spam-done") ' +
          "</dev/null >/dev/ttyS0 2>&1 &",
        logged("spam 1 x", from),
        "the guest to start printing",
      );
      const trimmer = vms.startSerialLogTrimmer(100);
      const lastLine = (s: string) =>
        Number(/spam (\d+) x+\r?\n(?![\s\S]*spam \d+ x+\r?\n)/.exec(s)?.[1] ?? 0);
      let maxSize = 0;
      let drops = 0;
      let prev = 0;
      let last = 0;
      const deadline = Date.now() + 60_000;
      // Until the guest has printed 16 times the cap (≈ 45 bytes a line).
      while (last * 45 < 16 * cap) {
        assert(Date.now() < deadline, `guest printed only ${last} lines`);
        await new Promise((r) => setTimeout(r, 50)); // sampling interval of the measurement
        const size = await logSize();
        maxSize = Math.max(maxSize, size);
        if (size < prev) drops++;
        prev = size;
        last = Math.max(last, lastLine(await vms.consoleLog(id, 4096)));
      }
      await trimmer.stop();
      await waitSerial("spam-done", Math.max(0, (await logSize()) - 64 * 1024), 120_000);
      const bytes = await Deno.readFile(vms.files(id).serialLog);
      console.log(
        `guest printed ${last} lines (≈ ${Math.round(last * 45 / 1024)} KiB); ` +
          `serial.log peaked at ${maxSize} bytes, trimmed ${drops} times, now ${bytes.length}`,
      );
      assert(drops >= 3, `only ${drops} trims`);
      // Between two checks (100 ms) the guest adds at most a few hundred KiB under TCG.
      assert(maxSize < 8 * cap, `serial.log reached ${maxSize} bytes`);
      // O_APPEND: after each truncation QEMU went on at the end, never at its old offset.
      assert(!bytes.includes(0), "serial.log contains NUL bytes");
      assert(lastLine(await vms.consoleLog(id, 4096)) >= last, "console-log shows the newest");
      assert(!new TextDecoder().decode(bytes).includes("otherix-test-image: hostname="));
    });

    await t.step("the guest powers itself off → QEMU quit, exit guest-shutdown", async () => {
      changes.length = 0;
      await type("poweroff -f", () => vms.get(id)?.phase === "stopped", "the guest to power off");
      const vm = vms.get(id)!;
      assertEquals([vm.pid, vm.exit?.reason], [null, "guest-shutdown"]);
      assertEquals(vm.exit?.detail, "QMP SHUTDOWN reason guest-shutdown");
      assertEquals(changes.map((c) => c.phase), ["stopping", "stopped"]);
      await waitGone(pid);
    });

    await t.step(
      `boot 2: start, then reboot ${IMAGE_HANDLES_ACPI ? "through ACPI" : "(timeout: reset)"}`,
      async () => {
        const from = await logSize();
        assertEquals((await act("start")).result, { phase: "running", accelerator: "tcg" });
        pid = vms.get(id)!.pid!;
        await waitSerial("login:", from);
        rebootFrom = await logSize();
        const reboot = await act("reboot", { timeout_seconds: IMAGE_HANDLES_ACPI ? 60 : 2 });
        assertEquals(reboot.result, { phase: "running" });
        assertEquals(
          reboot.progress,
          IMAGE_HANDLES_ACPI ? "guest shut down; reset" : "timeout: reset",
        );
        assertEquals([vms.get(id)?.pid, vms.get(id)?.phase], [pid, "running"]);
        // The machine starts over: the boot loader prints its banner again.
        await waitSerial("SYSLINUX", rebootFrom, 60_000);
      },
    );

    if (IMAGE_HANDLES_ACPI) {
      await t.step("boot 3: stop through the ACPI power button → requested, graceful", async () => {
        await waitSerial("login:", rebootFrom);
        const stop = await act("stop", { timeout_seconds: 60 });
        assertEquals(stop.result, { phase: "stopped" });
        const vm = vms.get(id)!;
        assertEquals([vm.exit?.reason, vm.exit?.detail], [
          "requested",
          "stop: the guest shut down on the ACPI power button",
        ]);
        await waitGone(pid);
        assertEquals((await act("start")).result?.phase, "running");
        pid = vms.get(id)!.pid!;
      });
    }

    await t.step("a guest still loading its kernel ignores ACPI: stop is forced", async () => {
      const stop = await act("stop", { timeout_seconds: 1 });
      assertEquals(stop.result, { phase: "stopped" });
      assertEquals(stop.progress, "timeout: forcing qemu off");
      assertEquals(
        vms.get(id)?.exit?.detail,
        "stop: forced after 1 s (the guest did not shut down)",
      );
      await waitGone(pid);
    });

    await t.step("delete", async () => {
      await vms.delete(id);
      assertEquals(vms.list(), []);
    });
  } finally {
    await vms.close();
    await killQemus(paths.runDir);
    await http.server.shutdown();
    await root.cleanup();
  }
});
