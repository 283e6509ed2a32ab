/**
 * `otherix pool …` through `run()` with a fake Io (fake clock, scripted prompts) against an
 * in-process fake API: the spec's table and views, flags mapped onto requests, `--wait`
 * outcomes, confirmation rules and error lines.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import {
  type PoolInstanceView,
  PoolInstanceViewSchema,
  PoolSchema,
} from "../../shared/api/pools.ts";
import {
  envelope,
  fakeIo,
  json,
  NOW,
  routesFetch,
  type Seen,
  taskFixture,
  uuid,
} from "./fixtures.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };
const GIB = 1024 ** 3;

/** A schema-valid pool instance view. */
function poolFixture(over: Partial<PoolInstanceView> = {}): PoolInstanceView {
  return PoolInstanceViewSchema.parse({
    id: uuid(20),
    name: "default",
    node: "node-a",
    type: "local_dir",
    path: "/var/lib/otherix/pools/default",
    status: "ready",
    message: null,
    total_bytes: 100 * GIB,
    available_bytes: Math.round(80.1 * GIB),
    images: [],
    images_total: over.images?.length ?? 0,
    is_default: true,
    effective_available_bytes: Math.round(80.1 * GIB),
    pending_vm_disk_bytes: 0,
    pressure: null,
    last_scan: null,
    last_scan_error: null,
    created_at: new Date(NOW - 2 * 86400_000).toISOString(),
    updated_at: new Date(NOW).toISOString(),
    ...over,
  });
}

Deno.test("pool list: the spec's columns, effective free space, pool STATUS, --show-ids", async () => {
  const items = [
    poolFixture(),
    poolFixture({
      id: uuid(21),
      node: "node-b",
      available_bytes: Math.round(79.4 * GIB),
      effective_available_bytes: Math.round(69.4 * GIB),
      pending_vm_disk_bytes: 10 * GIB,
    }),
    poolFixture({
      id: uuid(22),
      name: "fast",
      path: "/var/lib/otherix/pools/fast",
      is_default: false,
      available_bytes: 5 * GIB,
      effective_available_bytes: 5 * GIB,
      pressure: {
        disk: {
          under_pressure: true,
          consecutive: 1,
          since: new Date(NOW).toISOString(),
          available_percent: 5,
        },
      },
    }),
    poolFixture({
      id: uuid(23),
      name: "new",
      path: "/var/lib/otherix/pools/new",
      is_default: false,
      status: "pending",
      available_bytes: null,
      effective_available_bytes: null,
      created_at: new Date(NOW - 30_000).toISOString(),
    }),
  ];
  const seen: Seen[] = [];
  const fetch = routesFetch({ "GET /v1/pools": () => json({ items, next_cursor: null }) }, seen);
  const io = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "list"], io), 0, io.stderr);
  assertEquals(
    io.stdout,
    "NAME      NODE     TYPE        PATH                             AVAILABLE                          STATUS           DEFAULT   AGE\n" +
      "default   node-a   local_dir   /var/lib/otherix/pools/default   80.1GiB                            ready            yes       2d\n" +
      "default   node-b   local_dir   /var/lib/otherix/pools/default   79.4GiB (effective 69.4GiB free)   ready            yes       2d\n" +
      "fast      node-a   local_dir   /var/lib/otherix/pools/fast      5.0GiB                             under_pressure             2d\n" +
      "new       node-a   local_dir   /var/lib/otherix/pools/new       -                                  pending                    30s\n",
  );

  const ids = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "list", "--show-ids", "--node", "node-a"], ids), 0);
  assert(ids.stdout.startsWith("ID "), ids.stdout);
  assertStringIncludes(ids.stdout.split("\n")[1], `${uuid(20)}   default   node-a`);
  assertEquals(seen.at(-1)!.query.get("node"), "node-a");

  const typed = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "list", "--type", "local_dir", "-o", "json"], typed), 0);
  assertEquals(seen.at(-1)!.query.get("type"), "local_dir");
  const out = JSON.parse(typed.stdout);
  assertEquals([out.items.length, out.next_cursor], [4, null]);

  const badType = fakeIo({ env: API, fetch });
  const calls = seen.length;
  assertEquals(await run(["pool", "list", "--type", "nfs"], badType), 1);
  assertStringIncludes(badType.stderr, "local_dir");
  assertEquals(seen.length, calls, "no request for a bad flag");
});

Deno.test("pool list --limit/--cursor: one page and the next cursor on stderr", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/pools": () => json({ items: [poolFixture()], next_cursor: "c2" }),
    }, seen),
  });
  assertEquals(await run(["pool", "list", "--limit", "1", "--cursor", "c1"], io), 0, io.stderr);
  assertEquals([seen[0].query.get("limit"), seen[0].query.get("cursor")], ["1", "c1"]);
  assertEquals(io.stdout.split("\n").length, 3);
  assertEquals(io.stderr, "next page: --cursor c2\n");
});

Deno.test("pool get: NAME is the aggregated view, UUID the flat instance view with the agent's detail", async () => {
  const a = poolFixture();
  const b = poolFixture({
    id: uuid(21),
    node: "node-b",
    available_bytes: 95 * GIB,
    effective_available_bytes: 85 * GIB,
  });
  const one = poolFixture({
    effective_available_bytes: 70 * GIB,
    pending_vm_disk_bytes: 10 * GIB,
    images: [{
      basename: "ubuntu-24.04-minimal-cloudimg-arm64.img",
      sha256: "7f3c1a9b0e2d" + "0".repeat(52),
      size_bytes: 612 * 1024 ** 2,
    }],
    pressure: {
      disk: { under_pressure: false, consecutive: 0, since: null, available_percent: 80.1 },
    },
    last_scan: {
      scanned_at: new Date(NOW - 300_000).toISOString(),
      total_bytes: 100 * GIB,
      available_bytes: 80 * GIB,
      vm_disk_bytes: 3 * GIB / 2,
      vm_disk_count: 2,
      image_bytes: 612 * 1024 ** 2,
      image_count: 1,
    },
  });
  const fetch = routesFetch({
    [`GET /v1/pools/${uuid(20)}`]: () => json(one),
    "GET /v1/pools/default": () =>
      json(PoolSchema.parse({
        name: "default",
        type: "local_dir",
        is_cluster_default: true,
        instances: [a, b],
      })),
  });
  const byName = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "get", "default"], byName), 0, byName.stderr);
  assertEquals(
    byName.stdout,
    "name: default\n" +
      "type: local_dir\n" +
      "is_cluster_default: true\n" +
      "instances:\n" +
      "  - node: node-a\n" +
      `    id: ${uuid(20)}\n` +
      "    path: /var/lib/otherix/pools/default\n" +
      "    available: 80.1GiB\n" +
      "    status: ready\n" +
      "  - node: node-b\n" +
      `    id: ${uuid(21)}\n` +
      "    path: /var/lib/otherix/pools/default\n" +
      "    available: 95.0GiB (effective 85.0GiB free)\n" +
      "    status: ready\n",
  );

  const byId = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "get", uuid(20)], byId), 0, byId.stderr);
  assertEquals(
    byId.stdout,
    `id: ${uuid(20)}\n` +
      "name: default\n" +
      "node: node-a\n" +
      "type: local_dir\n" +
      "path: /var/lib/otherix/pools/default\n" +
      "available_bytes: 80.1GiB (effective 70.0GiB free)\n" +
      "is_cluster_default: true\n" +
      "status: ready\n" +
      "total_bytes: 100.0GiB\n" +
      "pending_vm_disks: 10.0GiB\n" +
      "pressure:\n" +
      "  disk: ok (80.1% free)\n" +
      "last_scan:\n" +
      `  scanned_at: ${one.last_scan!.scanned_at} (5m ago)\n` +
      "  vm_disks: 2 (1.5GiB)\n" +
      "  images: 1 (612.0MiB)\n" +
      "images:\n" +
      "  - ubuntu-24.04-minimal-cloudimg-arm64.img (sha 7f3c1a9b0e2d, 612.0MiB)\n" +
      `created_at: ${one.created_at}\n` +
      `updated_at: ${one.updated_at}\n`,
  );

  const yaml = fakeIo({ env: API, fetch });
  assertEquals(await run(["pool", "get", uuid(20), "-o", "yaml"], yaml), 0);
  assertStringIncludes(yaml.stdout, "effective_available_bytes: 75161927680\n");

  const missing = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/pools/*": () => envelope(404, "pool_not_found", 'pool "nope" not found'),
    }),
  });
  assertEquals(await run(["pool", "get", "nope"], missing), 1);
  assertEquals(missing.stderr, 'api_error: pool_not_found: pool "nope" not found\n');
});

Deno.test("pool create: one (name, node) per call, the spec's lines; --wait until ready or failed", async (t) => {
  const created = poolFixture({
    name: "fast-ssd",
    path: "/var/lib/otherix/pools/fast",
    status: "pending",
    is_default: false,
  });

  await t.step("the request body and the spec's lines", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({ "POST /v1/pools": () => json(created, 201) }, seen),
    });
    const code = await run(
      ["pool", "create", "fast-ssd", "--node", "node-a", "--path", "/var/lib/otherix/pools/fast"],
      io,
    );
    assertEquals(code, 0, io.stderr);
    assertEquals(seen[0].body, {
      name: "fast-ssd",
      node: "node-a",
      path: "/var/lib/otherix/pools/fast",
      type: "local_dir",
    });
    assertEquals(
      io.stdout,
      "pool fast-ssd created on node node-a\ntype: local_dir\npath: /var/lib/otherix/pools/fast\n",
    );
  });

  await t.step("--node and --path are required (no request)", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({ env: API, fetch: routesFetch({}, seen) });
    assertEquals(await run(["pool", "create", "x", "--node", "node-a"], io), 1);
    assertStringIncludes(io.stderr, "--path");
    assertEquals(seen.length, 0);
  });

  await t.step("--wait: polls until ready", async () => {
    let polls = 0;
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools": () => json(created, 201),
        "GET /v1/pools/*": () => json(++polls < 3 ? created : { ...created, status: "ready" }),
      }),
    });
    const args = ["pool", "create", "fast-ssd", "--node", "node-a", "--path", "/p/fast", "--wait"];
    assertEquals(await run(args, io), 0, io.stderr);
    assertEquals(polls, 3);
    assert(io.stdout.endsWith("pool fast-ssd ready on node node-a\n"), io.stdout);
  });

  await t.step("--wait: failed with path_not_allowed is api_error, exit 1", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools": () => json(created, 201),
        "GET /v1/pools/*": () =>
          json({
            ...created,
            status: "failed",
            message: "path_not_allowed: pool path /p/fast resolves outside the agent's pools " +
              "directory",
          }),
      }),
    });
    const args = ["pool", "create", "fast-ssd", "--node", "node-a", "--path", "/p/fast", "--wait"];
    assertEquals(await run(args, io), 1);
    assertEquals(
      io.stderr,
      "api_error: path_not_allowed: pool fast-ssd failed on node node-a: pool path /p/fast " +
        "resolves outside the agent's pools directory\n",
    );
  });

  await t.step("--wait: gives up after 60 s of pending", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools": () => json(created, 201),
        "GET /v1/pools/*": () => json(created),
      }),
    });
    const args = ["pool", "create", "fast-ssd", "--node", "node-a", "--path", "/p/fast", "--wait"];
    const start = io.now();
    assertEquals(await run(args, io), 1);
    assertEquals(io.now() - start, 60_000);
    assertStringIncludes(io.stderr, "error: timed out after 60s waiting for pool fast-ssd");
  });

  await t.step("server refusals are printed as api_error", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools": () =>
          envelope(409, "conflict", 'pool "fast-ssd" already exists on node "node-a"'),
      }),
    });
    const args = ["pool", "create", "fast-ssd", "--node", "node-a", "--path", "/p/fast"];
    assertEquals(await run(args, io), 1);
    assertEquals(
      io.stderr,
      'api_error: conflict: pool "fast-ssd" already exists on node "node-a"\n',
    );
  });
});

Deno.test("pool delete: confirmation unless --force, --node passed, the spec's line", async (t) => {
  const deleted = poolFixture({ name: "fast-ssd", is_default: false });

  await t.step("non-TTY without --force: refused before any request", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({ env: API, fetch: routesFetch({}, seen) });
    assertEquals(await run(["pool", "delete", "fast-ssd"], io), 1);
    assertStringIncludes(io.stderr, "stdin is not a terminal (pass --force)");
    assertEquals(seen.length, 0);
  });

  await t.step("TTY: 'n' aborts without a request; 'y' deletes", async () => {
    const seen: Seen[] = [];
    const fetch = routesFetch({ "DELETE /v1/pools/*": () => json(deleted) }, seen);
    const no = fakeIo({ env: API, tty: true, answers: ["n"], fetch });
    assertEquals(await run(["pool", "delete", "fast-ssd", "--node", "node-a"], no), 1);
    assertEquals(no.prompts.length, 1);
    assertStringIncludes(no.prompts[0], 'pool "fast-ssd" on node "node-a"');
    assertEquals(seen.length, 0);
    const yes = fakeIo({ env: API, tty: true, answers: ["y"], fetch });
    assertEquals(await run(["pool", "delete", "fast-ssd", "--node", "node-a"], yes), 0);
    assertEquals(yes.stdout, "pool fast-ssd deleted\n");
    assertEquals([seen[0].path, seen[0].query.get("node")], ["/v1/pools/fast-ssd", "node-a"]);
  });

  await t.step("--force: no prompt; by UUID the line names the pool", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({ "DELETE /v1/pools/*": () => json(deleted) }, seen),
    });
    assertEquals(await run(["pool", "delete", uuid(20), "--force"], io), 0, io.stderr);
    assertEquals(io.stdout, "pool fast-ssd deleted\n");
    assertEquals([seen[0].path, seen[0].query.has("node")], [`/v1/pools/${uuid(20)}`, false]);
  });

  await t.step("ambiguity and VM disks: the server's explanation verbatim", async () => {
    for (
      const [code, message] of [
        [
          "pool_name_ambiguous",
          `pool "dev" has 2 instances (node node-a: ${uuid(1)}, node node-b: ${uuid(2)}); ` +
          "pick one: otherix pool delete dev --node <node>, or otherix pool delete " +
          "<instance-uuid>",
        ],
        [
          "conflict",
          'pool "dev" on node "node-a" still backs 1 VM disk(s) (vm_disks: 1; VMs: web)',
        ],
      ]
    ) {
      const io = fakeIo({
        env: API,
        fetch: routesFetch({ "DELETE /v1/pools/*": () => envelope(409, code, message) }),
      });
      assertEquals(await run(["pool", "delete", "dev", "--force"], io), 1);
      assertEquals(io.stderr, `api_error: ${code}: ${message}\n`);
    }
  });
});

Deno.test("pool scan: queues a scan per instance; --wait prints what it found or the task's error", async (t) => {
  const scanned = poolFixture({
    last_scan: {
      scanned_at: new Date(NOW).toISOString(),
      total_bytes: 100 * GIB,
      available_bytes: Math.round(80.1 * GIB),
      vm_disk_bytes: GIB,
      vm_disk_count: 2,
      image_bytes: 612 * 1024 ** 2,
      image_count: 1,
    },
  });
  const queued = (status: "pending" | "succeeded" | "failed", error: unknown = null) => ({
    items: [{
      node: "node-a",
      id: uuid(20),
      task: taskFixture({
        id: uuid(60),
        type: "pool.scan",
        status,
        error: error as never,
        resource: { kind: "pool", name: "default", id: uuid(20) },
      }),
    }],
  });

  await t.step("without --wait: one line per task", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({ "POST /v1/pools/*/scan": () => json(queued("pending"), 202) }, seen),
    });
    assertEquals(await run(["pool", "scan", "default", "--node", "node-a"], io), 0, io.stderr);
    assertEquals(io.stdout, `pool default scan on node node-a task=${uuid(60)} status=pending\n`);
    assertEquals([seen[0].path, seen[0].query.get("node")], ["/v1/pools/default/scan", "node-a"]);
  });

  await t.step("--wait: the figures found", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools/*/scan": () => json(queued("pending"), 202),
        "GET /v1/tasks/*": () => json(queued("succeeded").items[0].task),
        [`GET /v1/pools/${uuid(20)}`]: () => json(scanned),
      }),
    });
    assertEquals(await run(["pool", "scan", "default", "--wait"], io), 0, io.stderr);
    assertEquals(
      io.stdout.split("\n")[1],
      "pool default on node node-a scanned: 80.1GiB available of 100.0GiB " +
        "(vm disks: 2, 1.0GiB; images: 1, 612.0MiB)",
    );
  });

  await t.step("--wait: a failed scan is api_error with the task's code", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/pools/*/scan": () => json(queued("pending"), 202),
        "GET /v1/tasks/*": () =>
          json(
            queued("failed", {
              code: "agent_unreachable",
              message: "agent of node node-a: refused",
            })
              .items[0].task,
          ),
      }),
    });
    assertEquals(await run(["pool", "scan", "default", "--wait"], io), 1);
    assert(
      io.stderr.endsWith("api_error: agent_unreachable: agent of node node-a: refused\n"),
      io.stderr,
    );
  });
});

Deno.test("pool get UUID: a capped image list says how many more the pool caches", async () => {
  const inst = poolFixture({
    images: [{ basename: "a.img", sha256: "ab".repeat(32), size_bytes: 1024 }],
    images_total: 501,
  });
  const io = fakeIo({
    env: API,
    fetch: routesFetch({ [`GET /v1/pools/${uuid(20)}`]: () => json(inst) }),
  });
  assertEquals(await run(["pool", "get", uuid(20)], io), 0);
  assertStringIncludes(
    io.stdout,
    "images:\n  - a.img (sha abababababab, 1.0KiB)\n  - … and 500 more (the first 1 by name are listed)\n",
  );
});
