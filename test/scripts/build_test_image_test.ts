/**
 * End-to-end test of `scripts/build-test-image.sh`: builds (or reuses) the test disk image,
 * boots it under QEMU (TCG only — never KVM) with a cloud-init NoCloud seed ISO on both the
 * `q35` (AHCI) and `pc` (IDE) machine types, and checks what the image's init prints on the
 * serial console. Also checks the cache (second run is a no-op) and the no-seed path.
 *
 * Needs: qemu-system-x86, qemu-utils, genisoimage (the script installs its own build deps).
 * Set OTHERIX_SKIP_VM_TESTS=1 to skip.
 *
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";

const REPO_ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname);
const SCRIPT = `${REPO_ROOT}scripts/build-test-image.sh`;
const BOOT_TIMEOUT_MS = 120_000;
const IGNORE = Deno.build.os !== "linux" || Deno.build.arch !== "x86_64" ||
  Deno.env.get("OTHERIX_SKIP_VM_TESTS") === "1";

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<RunResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd, stdin: "null" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `${cmd} not found: install qemu-system-x86 qemu-utils genisoimage ` +
          `(or set OTHERIX_SKIP_VM_TESTS=1)`,
      );
    }
    throw e;
  }
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function runOk(cmd: string, args: string[], cwd?: string): Promise<RunResult> {
  const r = await run(cmd, args, cwd);
  assertEquals(r.code, 0, `${cmd} ${args.join(" ")} failed (${r.code}):\n${r.stderr}`);
  return r;
}

/** Runs the build script; returns the image path (its last stdout line). */
async function buildImage(): Promise<string> {
  const r = await runOk("bash", [SCRIPT]);
  const lines = r.stdout.trim().split("\n");
  return lines[lines.length - 1];
}

let imagePromise: Promise<string> | undefined;
/** The image, built once per test run. */
function image(): Promise<string> {
  imagePromise ??= buildImage();
  return imagePromise;
}

async function sha256Hex(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomId(): string {
  return crypto.randomUUID().slice(0, 8);
}

interface Seed {
  hostname: string;
  marker: string;
}

interface BootResult {
  log: string;
  lines: string[];
  seconds: number;
}

/**
 * Boots the image (copy-on-write overlay) on `machine`, with a NoCloud seed ISO if `seed` is
 * given, until the serial log contains every string in `waitFor` (or the timeout hits).
 */
async function boot(machine: "q35" | "pc", seed: Seed | null, waitFor: string[]) {
  const img = await image();
  const dir = await Deno.makeTempDir({ prefix: "otherix-test-image-" });
  try {
    const drives = ["-drive", `file=${dir}/overlay.qcow2,if=virtio,format=qcow2`];
    if (seed) {
      // Quoted value: the image must strip the quotes.
      await Deno.writeTextFile(
        `${dir}/meta-data`,
        `instance-id: iid-${randomId()}\nlocal-hostname: "${seed.hostname}"\n`,
      );
      await Deno.writeTextFile(
        `${dir}/user-data`,
        `#cloud-config\n# otherix-marker: ${seed.marker}\nruncmd: []\n`,
      );
      await runOk("genisoimage", [
        "-quiet",
        "-output",
        "seed.iso",
        "-volid",
        "cidata",
        "-joliet",
        "-rock",
        "user-data",
        "meta-data",
      ], dir);
      drives.push("-drive", `file=${dir}/seed.iso,media=cdrom,if=ide,format=raw`);
    }
    await runOk(
      "qemu-img",
      ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", img, "overlay.qcow2", "2G"],
      dir,
    );

    const logPath = `${dir}/serial.log`;
    const started = performance.now();
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command("qemu-system-x86_64", {
        args: [
          // TCG only: this host's /dev/kvm hangs stock kernels.
          ...["-machine", `${machine},accel=tcg`, "-cpu", "max", "-m", "256"],
          ...["-nographic", "-nodefaults", "-display", "none", "-no-reboot"],
          ...["-serial", `file:${logPath}`],
          ...drives,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error("qemu-system-x86_64 not found: install qemu-system-x86");
      }
      throw e;
    }
    const output = child.output();
    let exited = false;
    child.status.then(() => exited = true);

    let log = "";
    let seconds = 0;
    try {
      const deadline = started + BOOT_TIMEOUT_MS;
      for (;;) {
        try {
          log = await Deno.readTextFile(logPath);
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        }
        if (waitFor.every((s) => log.includes(s))) break;
        if (exited || performance.now() > deadline) {
          const missing = waitFor.filter((s) => !log.includes(s));
          throw new Error(
            `${machine}: ${exited ? "QEMU exited" : "timeout"} before ${
              JSON.stringify(missing)
            } appeared; serial log tail:\n${log.slice(-3000)}`,
          );
        }
        await new Promise((r) => setTimeout(r, 250));
      }
      seconds = (performance.now() - started) / 1000;
    } finally {
      if (!exited) child.kill("SIGTERM");
      const out = await output;
      if (!out.success && out.signal !== "SIGTERM") {
        console.error(new TextDecoder().decode(out.stderr));
      }
    }
    const lines = log.split("\n").map((l) => l.replace(/\r$/, ""));
    return { log, lines, seconds } satisfies BootResult;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "build-test-image.sh: writes the image and its sha256, and a re-run uses the cache",
  ignore: IGNORE,
  async fn() {
    const img = await image();
    assertEquals(
      await Deno.realPath(img),
      await Deno.realPath(`${REPO_ROOT}.cache/test-image/otherix-test.img`),
    );
    const size = (await Deno.stat(img)).size;
    assert(size > 0 && size <= 64 * 1024 * 1024, `image size ${size}`);
    const recorded = (await Deno.readTextFile(`${img}.sha256`)).trim();
    assert(/^[0-9a-f]{64}$/.test(recorded), `bad sha256 file: ${recorded}`);
    assertEquals(recorded, await sha256Hex(img));

    // The boot sector carries the MBR signature and one active partition.
    const head = new Uint8Array(512);
    using f = await Deno.open(img);
    assertEquals(await f.read(head), 512);
    assertEquals([head[510], head[511]], [0x55, 0xaa]);
    assertEquals(head[446], 0x80);

    const t0 = performance.now();
    const again = await buildImage();
    const cachedSeconds = (performance.now() - t0) / 1000;
    assertEquals(again, img);
    assertEquals((await Deno.readTextFile(`${img}.sha256`)).trim(), recorded);
    assert(cachedSeconds < 10, `cached run took ${cachedSeconds.toFixed(1)} s`);
  },
});

for (const machine of ["q35", "pc"] as const) {
  Deno.test({
    name: `test image boots on ${machine} (TCG) and reports the NoCloud seed on ttyS0`,
    ignore: IGNORE,
    async fn() {
      const seed = { hostname: `otx-${randomId()}`, marker: `hello-${randomId()}` };
      const hostnameLine = `otherix-test-image: hostname=${seed.hostname}`;
      const markerLine = `otherix-test-image: marker=${seed.marker}`;
      const { lines, log, seconds } = await boot(machine, seed, [
        hostnameLine,
        markerLine,
        "login:",
      ]);
      console.log(`${machine}: login prompt after ${seconds.toFixed(1)} s`);
      assert(lines.includes(hostnameLine), `no exact line ${hostnameLine}`);
      assert(lines.includes(markerLine), `no exact line ${markerLine}`);
      // getty shows the hostname taken from the seed.
      assertStringIncludes(log, `${seed.hostname} login:`);
      assert(!log.includes("no cidata seed found"));
    },
  });
}

Deno.test({
  name: "test image without a seed says so and still offers a login prompt",
  ignore: IGNORE,
  async fn() {
    const { lines, log } = await boot("q35", null, ["login:"]);
    assert(lines.includes("otherix-test-image: no cidata seed found"), log.slice(-2000));
    assert(!lines.some((l) => l.startsWith("otherix-test-image: hostname=")));
  },
});
