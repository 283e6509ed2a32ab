/**
 * Boots the offline test image (scripts/build-test-image.sh → .cache/test-image) through the
 * agent's own pipeline (image cache → qcow2 overlay → NoCloud seed → QEMU under TCG) and
 * reads the serial log: the image's init prints the seed's hostname and marker lines, then a
 * login prompt. Skipped when the image has not been built.
 */
import { assertEquals, assertStringIncludes } from "../assert.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { VmManager } from "../../agent/vms.ts";
import { memoryLogger, pidAlive, serveFiles, tempRoot } from "./helpers.ts";

const IMAGE = new URL("../../.cache/test-image/otherix-test.img", import.meta.url).pathname;
const haveImage = await Deno.stat(IMAGE).then(() => true, () => false);

Deno.test({
  name: "boot: the test image boots under TCG and sees the cloud-init seed",
  ignore: !haveImage,
  async fn() {
    const t = await tempRoot("qemu:\n  accelerator: tcg\n");
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
      const running = Math.round(performance.now() - t0);
      assertEquals(res.phase, "running");
      let text = "";
      const deadline = Date.now() + 240_000;
      while (Date.now() < deadline) {
        text = await vms.consoleLog(id, 64 * 1024);
        if (text.includes("login:")) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      console.log(
        `create→running ${running} ms; create→login prompt ${
          Math.round(performance.now() - t0)
        } ms`,
      );
      assertStringIncludes(text, "otherix-test-image: hostname=boot-check");
      assertStringIncludes(text, "otherix-test-image: marker=agent-seed-ok");
      assertStringIncludes(text, "login:");
      const pid = vms.get(id)!.pid!;
      await vms.delete(id);
      assertEquals(await pidAlive(pid), false);
    } finally {
      await vms.shutdown();
      await http.server.shutdown();
      await t.cleanup();
    }
  },
});
