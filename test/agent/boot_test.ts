/**
 * Boots the offline test image (scripts/build-test-image.sh → .cache/test-image) through the
 * agent's own pipeline (image cache → qcow2 overlay → NoCloud seed → QEMU under TCG) and
 * reads the serial log: the image's init prints the seed's hostname and marker lines, then a
 * login prompt. Skipped when the image has not been built.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { VmManager } from "../../agent/vms.ts";
import { memoryLogger, pidAlive, serveFiles, tempRoot } from "./helpers.ts";

const IMAGE = new URL("../../.cache/test-image/otherix-test.img", import.meta.url).pathname;
const haveImage = await Deno.stat(IMAGE).then(() => true, () => false);

/** A VM booted from the test image up to its login prompt. */
interface BootedVm {
  vms: VmManager;
  id: string;
  /** The serial log when the login prompt appeared. */
  text: string;
  /** ms from create to `running`, and to the login prompt. */
  runningMs: number;
  loginMs: number;
}

/** Boots the test image (agent config `extraYaml`), runs `fn`, then cleans up. */
async function withBootedVm(extraYaml: string, fn: (vm: BootedVm) => Promise<void>) {
  const t = await tempRoot("qemu:\n  accelerator: tcg\n" + extraYaml);
  const bytes = await Deno.readFile(IMAGE);
  const sha = (await Deno.readTextFile(`${IMAGE}.sha256`)).trim().split(/\s+/)[0];
  const http = serveFiles(new Map([["/otherix-test.img", bytes]]));
  const paths = agentPaths(t.cfg);
  const { log } = memoryLogger();
  const vms = new VmManager({
    paths,
    qemu: t.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 10_000 }),
    log,
  });
  try {
    await vms.recover();
    const id = crypto.randomUUID();
    const t0 = performance.now();
    const res = await vms.create({
      task_id: crypto.randomUUID(),
      vm: {
        id,
        name: "boot-check",
        image_url: `${http.base}/otherix-test.img`,
        image_sha256: sha,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 256,
        disk_gib: 1,
        user_data: "#cloud-config\n# otherix-marker: agent-seed-ok\n",
      },
      pool: { name: "default", path: `${paths.poolsDir}/default` },
    });
    const runningMs = Math.round(performance.now() - t0);
    assertEquals(res.phase, "running");
    let text = "";
    const deadline = Date.now() + 240_000;
    while (Date.now() < deadline) {
      text = await vms.consoleLog(id, 64 * 1024);
      if (text.includes("login:")) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const loginMs = Math.round(performance.now() - t0);
    await fn({ vms, id, text, runningMs, loginMs });
  } finally {
    await vms.shutdown();
    await http.server.shutdown();
    await t.cleanup();
  }
}

Deno.test({
  name: "boot: the test image boots under TCG and sees the cloud-init seed",
  ignore: !haveImage,
  async fn() {
    await withBootedVm("", async ({ vms, id, text, runningMs, loginMs }) => {
      console.log(`create→running ${runningMs} ms; create→login prompt ${loginMs} ms`);
      assertStringIncludes(text, "otherix-test-image: hostname=boot-check");
      assertStringIncludes(text, "otherix-test-image: marker=agent-seed-ok");
      assertStringIncludes(text, "login:");
      const pid = vms.get(id)!.pid!;
      await vms.delete(id);
      assertEquals(await pidAlive(pid), false);
    });
  },
});

Deno.test({
  name: "boot: a chatty guest's serial log stays capped (QEMU logappend=on + agent trimming)",
  ignore: !haveImage,
  async fn() {
    const cap = 64 * 1024;
    await withBootedVm(`  serial_log_max_bytes: ${cap}\n`, async ({ vms, id, text }) => {
      assertStringIncludes(text, "login:");
      const files = vms.files(id);
      const enc = new TextEncoder();
      // Log in on the serial console and start a background loop printing numbered lines to
      // ttyS0, then hang up (with a client attached QEMU's socket chardev is much slower).
      const conn = await Deno.connect({ transport: "unix", path: files.serialSock });
      try {
        await conn.write(enc.encode("root\n"));
        const deadline = Date.now() + 30_000;
        while (!(await vms.consoleLog(id, 4096)).includes("/root #")) {
          assert(Date.now() < deadline, "no shell prompt after logging in");
          await new Promise((r) => setTimeout(r, 200));
        }
        await conn.write(enc.encode(
          '(i=0; while :; do i=$((i+1)); echo "spam $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; done)' +
            " </dev/null >/dev/ttyS0 2>&1 &\n",
        ));
        await new Promise((r) => setTimeout(r, 500));
      } finally {
        conn.close();
      }

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
        await new Promise((r) => setTimeout(r, 50));
        const size = (await Deno.stat(files.serialLog)).size;
        maxSize = Math.max(maxSize, size);
        if (size < prev) drops++;
        prev = size;
        last = Math.max(last, lastLine(await vms.consoleLog(id, 4096)));
      }
      await trimmer.stop();
      const log = await Deno.readFile(files.serialLog);
      console.log(
        `guest printed ${last} lines (≈ ${Math.round(last * 45 / 1024)} KiB); ` +
          `serial.log peaked at ${maxSize} bytes, trimmed ${drops} times, now ${log.length}`,
      );
      assert(drops >= 3, `only ${drops} trims`);
      // Between two checks (100 ms) the guest adds at most a few hundred KiB under TCG.
      assert(maxSize < 8 * cap, `serial.log reached ${maxSize} bytes`);
      // O_APPEND: after each truncation QEMU went on at the end, never at its old offset
      // (which would leave a hole of NUL bytes).
      assert(!log.includes(0), "serial.log contains NUL bytes");
      const tail = await vms.consoleLog(id, 4096);
      assert(lastLine(tail) >= last, "console-log shows the newest lines");
      assert(!new TextDecoder().decode(log).includes("otherix-test-image: hostname="));
    });
  },
});
