/**
 * The offline test image for tests: built (or taken from the cache) by
 * `scripts/build-test-image.sh`.
 *
 * @module
 */
import { REPO_ROOT } from "../scripts/permissions.ts";

/** The built image and its SHA-256 (lowercase hex). */
export interface TestImage {
  path: string;
  sha256: string;
}

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
