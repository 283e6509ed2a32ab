/**
 * End-to-end test of `scripts/build-test-image.sh`: builds (or reuses) the test disk image and
 * boots it under QEMU (TCG only — never KVM) three times, each boot checked for several things
 * over its serial console (ttyS0) and QMP:
 *
 * - q35 (AHCI) with a NoCloud seed: the seed's hostname and marker, root login, a command, Ctrl-C,
 *   then the ACPI power button (QMP `system_powerdown`) powers the guest off;
 * - pc (IDE) with a seed: `reboot` at the shell resets the guest, which boots to the login prompt
 *   again; `poweroff` at the shell powers it off;
 * - q35 without a seed: the image says so, still offers a login prompt; `poweroff -f` powers off.
 *
 * Also checks the cache (a second run is a no-op).
 *
 * Needs: qemu-system-x86, qemu-utils, genisoimage (the script installs its own build deps).
 * Set OTHERIX_SKIP_VM_TESTS=1 to skip.
 *
 * @module
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { QemuGuest } from "./qemu_guest.ts";
import { TEST_IMAGE_LOGIN, TEST_IMAGE_SHELL_PROMPT } from "../test_image.ts";

const REPO_ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname);
const SCRIPT = `${REPO_ROOT}scripts/build-test-image.sh`;
/** A TCG boot to the login prompt on a busy 2-core machine (7–35 s when idle), ms. */
const BOOT_MS = 180_000;
/**
 * From the power request (button, `poweroff`, `reboot`) to QEMU's SHUTDOWN / RESET event, ms.
 * The image takes ~0.1 s under TCG (its init waits up to 2 s for processes to exit); the rest is
 * slack for a loaded machine.
 */
const POWER_MS = 15_000;
/** From QEMU's SHUTDOWN event to the QEMU process exiting, ms. */
const EXIT_MS = 10_000;
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

/** Console lines (CR LF → line) of `text`. */
function lines(text: string): string[] {
  return text.split("\n").map((l) => l.replace(/\r$/, ""));
}

interface Seed {
  hostname: string;
  marker: string;
}

/** The exact console lines the image's init prints for `seed`. */
function seedLines(seed: Seed): { hostname: string; marker: string } {
  return {
    hostname: `otherix-test-image: hostname=${seed.hostname}`,
    marker: `otherix-test-image: marker=${seed.marker}`,
  };
}

/**
 * Boots the image on `machine` (copy-on-write overlay) with a NoCloud seed ISO if `seed` is
 * given, runs `fn` with the guest, then kills QEMU if it still runs and removes the files.
 */
async function withGuest(
  machine: "q35" | "pc",
  seed: Seed | null,
  opts: { noReboot: boolean },
  fn: (guest: QemuGuest) => Promise<void>,
): Promise<void> {
  const img = await image();
  // Short path: unix socket paths must stay under 108 bytes.
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-img-" });
  let guest: QemuGuest | undefined;
  try {
    let seedIso: string | undefined;
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
        ...["-quiet", "-output", "seed.iso", "-volid", "cidata", "-joliet", "-rock"],
        ...["user-data", "meta-data"],
      ], dir);
      seedIso = `${dir}/seed.iso`;
    }
    guest = await QemuGuest.start({ image: img, machine, dir, seedIso, noReboot: opts.noReboot });
    await fn(guest);
  } finally {
    await guest?.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Logs in as root at the first login prompt after console offset `from`; returns the offset
 * after the shell prompt.
 */
async function logIn(guest: QemuGuest, from: number): Promise<number> {
  const at = await guest.waitForConsole("login:", from, BOOT_MS);
  await guest.type(`${TEST_IMAGE_LOGIN}\r`);
  return await guest.waitForConsole(TEST_IMAGE_SHELL_PROMPT, at, 30_000);
}

/**
 * Runs `t.step` and stops the test when the step fails (the later steps of a boot build on the
 * earlier ones; letting them run would only add timeouts).
 */
async function step(t: Deno.TestContext, name: string, fn: () => Promise<void>): Promise<void> {
  if (!await t.step(name, fn)) throw new Error(`step failed: ${name}`);
}

/** Seconds since `t0` (`performance.now()` ms), for the timing log lines. */
function since(t0: number): string {
  return `${((performance.now() - t0) / 1000).toFixed(2)} s`;
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

Deno.test({
  name: "test image on q35 (TCG): seed on ttyS0, root shell, ACPI power button powers it off",
  ignore: IGNORE,
  async fn(t) {
    const seed = { hostname: `otx-${randomId()}`, marker: `hello-${randomId()}` };
    const expected = seedLines(seed);
    await withGuest("q35", seed, { noReboot: true }, async (guest) => {
      const t0 = performance.now();
      let at = 0;

      await step(t, "init prints the seed's hostname and marker, then a login prompt", async () => {
        at = await guest.waitForConsole(`${seed.hostname} login:`, 0, BOOT_MS);
        console.log(`q35: login prompt after ${since(t0)}`);
        const out = lines(guest.console);
        assert(out.includes(expected.hostname), `no exact line ${expected.hostname}`);
        assert(out.includes(expected.marker), `no exact line ${expected.marker}`);
        assert(!guest.console.includes("no cidata seed found"));
        assert(!guest.console.includes("the ACPI power button is ignored"), guest.console);
      });

      await step(t, "root logs in without a password and the shell runs a command", async () => {
        at = await logIn(guest, at - "login:".length);
        const tag = randomId();
        // The typed line echoes "$((6*7))"; only running it prints 42.
        await guest.type(`echo otx-$((6*7))-${tag}\r`);
        at = await guest.waitForConsole(`otx-42-${tag}`, at, 30_000);
      });

      await step(t, "Ctrl-C interrupts a foreground command", async () => {
        // The child prints the tag once it is the terminal's foreground process, so the
        // Ctrl-C cannot reach the shell before the command runs.
        await guest.type("sh -c 'echo otx-sleeping-$((2+2)); exec sleep 600'\r");
        at = await guest.waitForConsole("otx-sleeping-4", at, 30_000);
        await guest.type("\x03");
        at = await guest.waitForConsole(TEST_IMAGE_SHELL_PROMPT, at, 30_000);
        // Exit status 130 = 128 + SIGINT: the command died of the interrupt.
        await guest.type("echo otx-status-$((1000+$?))\r");
        at = await guest.waitForConsole("otx-status-1", at, 30_000);
        assertEquals(guest.console.slice(at, at + 3), "130", guest.console.slice(at - 200));
      });

      await step(t, "system_powerdown → clean guest power-off → QEMU exits", async () => {
        const from = guest.events.length;
        const pressed = performance.now();
        assertEquals(await guest.qmp("system_powerdown"), {});
        const shutdown = await guest.waitForEvent("SHUTDOWN", from, POWER_MS);
        console.log(`q35: SHUTDOWN ${since(pressed)} after system_powerdown`);
        assertEquals(shutdown.data, { guest: true, reason: "guest-shutdown" });
        assertEquals(
          guest.events.slice(from).map((e) => e.event),
          ["POWERDOWN", "SHUTDOWN"],
        );
        const status = await guest.waitForExit(EXIT_MS);
        assertEquals(status.code, 0);
        // The button went through acpid and init's clean path, not a forced power-off.
        assertStringIncludes(guest.console.slice(at), "otherix-test-image: shutdown: poweroff");
      });
    });
  },
});

Deno.test({
  name: "test image on pc (TCG): `reboot` boots it again, `poweroff` at the shell powers it off",
  ignore: IGNORE,
  async fn(t) {
    const seed = { hostname: `otx-${randomId()}`, marker: `hello-${randomId()}` };
    const expected = seedLines(seed);
    await withGuest("pc", seed, { noReboot: false }, async (guest) => {
      const t0 = performance.now();
      let at = 0;

      await step(t, "init prints the seed's hostname and marker; root logs in", async () => {
        at = await guest.waitForConsole(`${seed.hostname} login:`, 0, BOOT_MS);
        console.log(`pc: login prompt after ${since(t0)}`);
        const out = lines(guest.console);
        assert(out.includes(expected.hostname), `no exact line ${expected.hostname}`);
        assert(out.includes(expected.marker), `no exact line ${expected.marker}`);
        at = await logIn(guest, at - "login:".length);
      });

      await step(
        t,
        "`reboot` → guest reset → the guest boots to the login prompt again",
        async () => {
          const from = guest.events.length;
          const typed = performance.now();
          await guest.type("reboot\r");
          const reset = await guest.waitForEvent("RESET", from, POWER_MS);
          console.log(`pc: RESET ${since(typed)} after reboot`);
          assertEquals(reset.data, { guest: true, reason: "guest-reset" });
          at = await guest.waitForConsole("otherix-test-image: shutdown: reboot", at, POWER_MS);
          // The second boot prints the seed lines again, after the reset.
          const login = await guest.waitForConsole(`${seed.hostname} login:`, at, BOOT_MS);
          console.log(`pc: login prompt again ${since(typed)} after reboot`);
          const out = lines(guest.console.slice(at, login));
          assert(out.includes(expected.hostname), `no ${expected.hostname} after the reboot`);
          assert(out.includes(expected.marker), `no ${expected.marker} after the reboot`);
          assertEquals(guest.exitStatus, null);
          assert(!guest.events.some((e) => e.event === "SHUTDOWN"), "SHUTDOWN on a reboot");
          at = await logIn(guest, login - "login:".length);
        },
      );

      await step(t, "`poweroff` at the shell → guest power-off → QEMU exits", async () => {
        const from = guest.events.length;
        const typed = performance.now();
        await guest.type("poweroff\r");
        const shutdown = await guest.waitForEvent("SHUTDOWN", from, POWER_MS);
        console.log(`pc: SHUTDOWN ${since(typed)} after poweroff`);
        assertEquals(shutdown.data, { guest: true, reason: "guest-shutdown" });
        const status = await guest.waitForExit(EXIT_MS);
        assertEquals(status.code, 0);
        assertStringIncludes(guest.console.slice(at), "otherix-test-image: shutdown: poweroff");
      });
    });
  },
});

Deno.test({
  name: "test image without a seed says so, offers a login prompt; `poweroff -f` powers it off",
  ignore: IGNORE,
  async fn(t) {
    await withGuest("q35", null, { noReboot: true }, async (guest) => {
      let at = 0;

      await step(t, "init says there is no seed, then a login prompt", async () => {
        at = await guest.waitForConsole("otherix-test login:", 0, BOOT_MS);
        const out = lines(guest.console);
        assert(out.includes("otherix-test-image: no cidata seed found"), guest.console);
        assert(!out.some((l) => l.startsWith("otherix-test-image: hostname=")));
        at = await logIn(guest, at - "login:".length);
      });

      await step(t, "`poweroff -f` → immediate guest power-off → QEMU exits", async () => {
        const from = guest.events.length;
        await guest.type("poweroff -f\r");
        const shutdown = await guest.waitForEvent("SHUTDOWN", from, POWER_MS);
        assertEquals(shutdown.data, { guest: true, reason: "guest-shutdown" });
        // -f calls reboot(2) directly: init's shutdown path does not run.
        assert(!guest.console.slice(at).includes("otherix-test-image: shutdown:"));
        const status = await guest.waitForExit(EXIT_MS);
        assertEquals(status.code, 0);
      });
    });
  },
});
