/**
 * The build steps of the dev pipeline (dev/scripts/dev.ts): `build-api` compiles
 * `bin/otherix-api` with the dev config's sandbox (so `./bin/otherix-api --config
 * dev/config/api.yaml` can read that file), the Lima agent is cross-built for the Mac's
 * architecture with the standard roots; offline, `build-api` says how to build anyway.
 * (`deno compile` itself needs Deno's runtime download, unreachable here.)
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { agentBuildArgv, apiBuildArgv } from "../../dev/scripts/dev.ts";
import { resolveEnv } from "../../dev/scripts/env.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { tempRoot } from "../harness.ts";
import { runTask, show } from "./helpers.ts";

Deno.test("build-api: the binary carries the dev config's sandbox", async () => {
  const env = await resolveEnv({
    env: (n) => (n === "HOME" ? "/home/dev" : undefined),
    os: "linux",
    uid: 1000,
    systemdRunning: () => Promise.resolve(false),
  });
  const argv = apiBuildArgv(env);
  const config = join(REPO_ROOT, "dev/config/api.yaml");
  assertEquals(argv.slice(1, 2), ["compile"]);
  assert(argv.includes(`--allow-read=${config},/var/lib/otherix/api`), argv.join(" "));
  assert(argv.includes("--allow-write=/var/lib/otherix/api"), argv.join(" "));
  assert(argv.includes("--unstable-kv"));
  assertEquals(argv.slice(-3), [
    "--output",
    join(REPO_ROOT, "bin/otherix-api"),
    join(REPO_ROOT, "cp/main.ts"),
  ]);
});

Deno.test("build: the Lima agent is built for linux on the Mac's architecture", () => {
  for (const [arch, target] of [["arm64", "aarch64"], ["amd64", "x86_64"]] as const) {
    const argv = agentBuildArgv(REPO_ROOT, arch);
    assertEquals(argv.slice(1, 4), ["compile", "--target", `${target}-unknown-linux-gnu`]);
    assert(argv.includes("--allow-read=/etc/otherix,/var/lib/otherix,/run/otherix"));
    assertEquals(argv.slice(-3), [
      "--output",
      join(REPO_ROOT, `bin/linux-${arch}/otherix-agent`),
      join(REPO_ROOT, "agent/main.ts"),
    ]);
  }
});

Deno.test("build-api: without Deno's runtime it fails saying how to build offline", async () => {
  const root = await tempRoot("otx-build");
  try {
    const r = await runTask("build-api", {
      DENORT_BIN: join(root, "no-such-denort"),
      OTHERIX_DEV_MODE: "native",
    });
    assertEquals(r.code, 1, show(r));
    assertStringIncludes(r.stderr, "dev: build-api: deno compile failed");
    assertStringIncludes(r.stderr, "DENORT_BIN");
    assert(!(await Deno.stat(join(REPO_ROOT, "bin/otherix-api")).then(() => true, () => false)));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
