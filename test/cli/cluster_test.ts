/**
 * `otherix cluster get-default-pool | set-default-pool | unset-default-pool` through `run()`
 * with a fake Io against an in-process fake API: the spec's exact lines, the request each
 * verb sends, the confirmation rule and refusals printed as `api_error`.
 */
import { assertEquals, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import { envelope, fakeIo, json, routesFetch, type Seen } from "./fixtures.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };
const AT = "2026-05-12T19:00:00.000Z";

Deno.test("cluster get-default-pool: the name, or the hint with exit 0", async () => {
  const named = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/cluster/default-pool": () => json({ default_pool_name: "default", updated_at: AT }),
    }),
  });
  assertEquals(await run(["cluster", "get-default-pool"], named), 0, named.stderr);
  assertEquals(named.stdout, "default-pool: default\n");

  const unset = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/cluster/default-pool": () => json({ default_pool_name: null, updated_at: AT }),
    }),
  });
  assertEquals(await run(["cluster", "get-default-pool"], unset), 0, unset.stderr);
  assertEquals(
    unset.stdout,
    "no default pool configured (run 'otherix cluster set-default-pool <name>' to configure)\n",
  );

  const asJson = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/cluster/default-pool": () => json({ default_pool_name: null, updated_at: null }),
    }),
  });
  assertEquals(await run(["cluster", "get-default-pool", "-o", "json"], asJson), 0);
  assertEquals(JSON.parse(asJson.stdout), { default_pool_name: null, updated_at: null });
});

Deno.test("cluster set-default-pool: PUT {name}; the stored name in the line; refusals verbatim", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "PUT /v1/cluster/default-pool": () => json({ default_pool_name: "fast-ssd", updated_at: AT }),
    }, seen),
  });
  assertEquals(await run(["cluster", "set-default-pool", "Fast-SSD"], io), 0, io.stderr);
  assertEquals(seen[0].body, { name: "Fast-SSD" });
  assertEquals(io.stdout, "default pool set to 'fast-ssd'\n");

  for (
    const [status, code, message] of [
      [404, "pool_not_found", 'pool "nope" not found'],
      [403, "permission_denied", "role operator lacks permission cluster:manage"],
    ] as const
  ) {
    const bad = fakeIo({
      env: API,
      fetch: routesFetch({
        "PUT /v1/cluster/default-pool": () => envelope(status, code, message),
      }),
    });
    assertEquals(await run(["cluster", "set-default-pool", "nope"], bad), 1);
    assertEquals(bad.stderr, `api_error: ${code}: ${message}\n`);
    assertEquals(bad.stdout, "");
  }
});

Deno.test("cluster unset-default-pool: prompts unless --force; refuses without a terminal", async (t) => {
  const cleared = () => json({ default_pool_name: null, updated_at: AT });

  await t.step("--force: DELETE, the spec's line", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({ "DELETE /v1/cluster/default-pool": cleared }, seen),
    });
    assertEquals(await run(["cluster", "unset-default-pool", "--force"], io), 0, io.stderr);
    assertEquals(io.stdout, "default pool cleared\n");
    assertEquals(seen.map((s) => s.method), ["DELETE"]);
  });

  await t.step("no terminal, no --force: refused, nothing sent", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({ env: API, fetch: routesFetch({}, seen) });
    assertEquals(await run(["cluster", "unset-default-pool"], io), 1);
    assertStringIncludes(io.stderr, "(pass --force)");
    assertEquals(seen.length, 0);
  });

  await t.step("terminal: 'n' keeps it, 'y' clears it", async () => {
    const seen: Seen[] = [];
    const fetch = routesFetch({ "DELETE /v1/cluster/default-pool": cleared }, seen);
    const no = fakeIo({ env: API, tty: true, answers: ["n"], fetch });
    assertEquals(await run(["cluster", "unset-default-pool"], no), 1);
    assertEquals([no.prompts.length, seen.length], [1, 0]);
    const yes = fakeIo({ env: API, tty: true, answers: ["y"], fetch });
    assertEquals(await run(["cluster", "unset-default-pool"], yes), 0);
    assertEquals([yes.stdout, seen.length], ["default pool cleared\n", 1]);
  });
});
