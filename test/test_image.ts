/**
 * The offline test image for tests: built (or taken from the cache) by
 * `scripts/build-test-image.sh` (its header is the full description).
 *
 * What a guest booted from it does, on ttyS0 (115200 baud) and over QMP:
 * - prints `otherix-test-image: hostname=<local-hostname>` and one
 *   `otherix-test-image: marker=<text>` line per `otherix-marker:` line of a NoCloud seed
 *   (or `otherix-test-image: no cidata seed found`, after ~20 s of looking), then a respawning
 *   `<hostname> login:` prompt; {@link TEST_IMAGE_LOGIN} logs in without a password to a
 *   busybox shell whose prompt is {@link TEST_IMAGE_SHELL_PROMPT};
 * - the ACPI power button (QMP `system_powerdown`), once the boot reached the seed search, and
 *   `poweroff` at the shell: a clean power-off (console line `otherix-test-image: shutdown:
 *   poweroff`), QMP `SHUTDOWN {guest: true, reason: "guest-shutdown"}` ~0.1 s later under TCG
 *   (at most ~2 s: init waits that long for processes to exit);
 * - `reboot` at the shell: QMP `RESET {guest: true, reason: "guest-reset"}` (possibly twice)
 *   and a new boot to the login prompt; `poweroff -f` / `reboot -f`: the same events at once.
 *
 * @module
 */
import { REPO_ROOT } from "../scripts/permissions.ts";

/** The built image and its SHA-256 (lowercase hex). */
export interface TestImage {
  path: string;
  sha256: string;
}

/** The user that logs in at the image's `login:` prompt (no password). */
export const TEST_IMAGE_LOGIN = "root";

/**
 * The root shell's prompt (busybox ash, cwd /root). The line editor follows it with a
 * cursor-position query (ESC `[6n`), which a terminal answers and a test may ignore.
 */
export const TEST_IMAGE_SHELL_PROMPT = "/root # ";

/**
 * Builds the test image if needed and returns it.
 *
 * @throws when the build script fails (its output is in the message)
 */
export async function ensureTestImage(): Promise<TestImage> {
  const out = await new Deno.Command("bash", {
    args: [`${REPO_ROOT}/scripts/build-test-image.sh`],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (out.code !== 0) {
    throw new Error(
      `build-test-image.sh failed:\n${dec.decode(out.stderr)}\n${dec.decode(out.stdout)}`,
    );
  }
  const path = dec.decode(out.stdout).trim().split("\n").pop()!.trim();
  const sha256 = (await Deno.readTextFile(`${path}.sha256`)).trim().split(/\s+/)[0];
  return { path, sha256 };
}
