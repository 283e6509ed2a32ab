/**
 * In-process tests of the command tree through `run()` with a fake Io (fake clock, scripted
 * prompts, in-process API): the paths a subprocess cannot easily reach (TTY prompts, long
 * waits).
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import { loadConfig } from "../../cli/config_store.ts";
import {
  envelope,
  fakeIo,
  json,
  nodeFixture,
  NOW,
  routesFetch,
  type Seen,
  taskFixture,
  uuid,
  vmFixture,
} from "./fixtures.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };

Deno.test("vm create --wait: times out with a clear message and exit 1", async () => {
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/vms": () => json(taskFixture(), 202),
      "GET /v1/tasks/*": () => json(taskFixture({ status: "running" })),
    }),
  });
  const code = await run(
    [
      "vm",
      "create",
      "demo-vm",
      "--image-url",
      "http://img/x.img",
      "--wait",
      "--wait-timeout",
      "30s",
    ],
    io,
  );
  assertEquals(code, 1);
  assertStringIncludes(io.stdout, `created task=${uuid(50)} status=pending`);
  assertStringIncludes(io.stderr, "error: timed out after 30s waiting for task");
  assertStringIncludes(io.stderr, "last status: running");
  assertStringIncludes(io.stderr, "otherix vm get demo-vm");
});

Deno.test("vm create --wait on a terminal: dots on stderr, then vm running", async () => {
  let polls = 0;
  const io = fakeIo({
    env: API,
    tty: true,
    fetch: routesFetch({
      "POST /v1/vms": () => json(taskFixture(), 202),
      "GET /v1/tasks/*": () => json(taskFixture({ status: ++polls < 4 ? "running" : "succeeded" })),
    }),
  });
  const code = await run(
    ["vm", "create", "demo-vm", "--image-url", "http://img/x.img", "--wait"],
    io,
  );
  assertEquals(code, 0);
  assertEquals(io.stderr, "....\n");
  assertEquals(io.stdout, `created task=${uuid(50)} status=pending\nvm running task=${uuid(50)}\n`);
});

Deno.test("vm create: flags map onto the request body; @file user-data; -o json", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    files: { "/tmp/ud.yaml": "#cloud-config\n" },
    fetch: routesFetch({ "POST /v1/vms": () => json(taskFixture(), 202) }, seen),
  });
  const code = await run([
    "vm",
    "create",
    "demo-vm",
    "--image-url",
    "http://img/x.img",
    "--arch",
    "arm64",
    "--vcpus",
    "2",
    "--memory-mb",
    "2048",
    "--disk-gib",
    "20",
    "--image-sha256",
    "ab",
    "--user-data",
    "@/tmp/ud.yaml",
    "--pool",
    "fast",
    "--node",
    "node-a",
    "-o",
    "json",
  ], io);
  assertEquals(code, 0, io.stderr);
  assertEquals(seen[0].body, {
    name: "demo-vm",
    image_url: "http://img/x.img",
    architecture: "arm64",
    image_sha256: "ab",
    vcpus: 2,
    memory_mb: 2048,
    disk_gib: 20,
    user_data: "#cloud-config\n",
    pool: "fast",
    node: "node-a",
  });
  assertEquals(JSON.parse(io.stdout).id, uuid(50));
});

Deno.test("vm create: default arch amd64, inline user-data, server validation_failed surfaces", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/vms": () =>
        envelope(400, "validation_failed", "invalid request body: vcpus: Too big"),
    }, seen),
  });
  const code = await run(
    [
      "vm",
      "create",
      "demo-vm",
      "--image-url",
      "http://img/x.img",
      "--vcpus",
      "999",
      "--user-data",
      "hi",
    ],
    io,
  );
  assertEquals(code, 1);
  assertEquals((seen[0].body as Record<string, unknown>).architecture, "amd64");
  assertEquals((seen[0].body as Record<string, unknown>).user_data, "hi");
  assertEquals(io.stderr, "api_error: validation_failed: invalid request body: vcpus: Too big\n");
});

Deno.test("vm create: unreadable --user-data file is a usage error before any request", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({ env: API, fetch: routesFetch({}, seen) });
  const code = await run(
    ["vm", "create", "demo-vm", "--image-url", "http://img/x.img", "--user-data", "@/nope"],
    io,
  );
  assertEquals(code, 1);
  assertStringIncludes(io.stderr, "error: cannot read --user-data file /nope");
  assertEquals(seen.length, 0);
});

Deno.test("vm delete: TTY confirmation; 'n' aborts without a request, 'y' deletes and waits", async () => {
  const seen: Seen[] = [];
  const routes = {
    "DELETE /v1/vms/*": () => json(taskFixture({ type: "vm.delete" }), 202),
    "GET /v1/tasks/*": () => json(taskFixture({ type: "vm.delete", status: "succeeded" })),
  };
  const no = fakeIo({ env: API, tty: true, answers: ["n"], fetch: routesFetch(routes, seen) });
  assertEquals(await run(["vm", "delete", "demo-vm"], no), 1);
  assertStringIncludes(no.prompts[0], 'Delete VM "demo-vm"? [y/N]');
  assertStringIncludes(no.stderr, "aborted");
  assertEquals(seen.length, 0);

  const yes = fakeIo({ env: API, tty: true, answers: ["y"], fetch: routesFetch(routes, seen) });
  assertEquals(await run(["vm", "delete", "demo-vm", "--wait"], yes), 0, yes.stderr);
  assertEquals(
    yes.stdout,
    `deleted task=${uuid(50)} status=pending\nvm deleted task=${uuid(50)}\n`,
  );
  assertEquals(seen.map((s) => `${s.method} ${s.path}`), [
    "DELETE /v1/vms/demo-vm",
    "GET /v1/events", // 404 here: an older server, so --wait polls
    `GET /v1/tasks/${uuid(50)}`,
  ]);
  assertEquals(seen[0].query.get("force"), null, "no --force, no ?force=true");
});

Deno.test("vm delete --wait: a failed task is api_error with its code", async () => {
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "DELETE /v1/vms/*": () => json(taskFixture({ type: "vm.delete" }), 202),
      "GET /v1/tasks/*": () =>
        json(taskFixture({
          type: "vm.delete",
          status: "failed",
          error: { code: "agent_unreachable", message: "node node-a did not answer" },
        })),
    }),
  });
  assertEquals(await run(["vm", "delete", "demo-vm", "--force", "--wait"], io), 1);
  assertStringIncludes(io.stderr, "task=");
  assertStringIncludes(io.stderr, "api_error: agent_unreachable: node node-a did not answer\n");
});

Deno.test("vm logs: prints the console tail and passes --tail-bytes", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/vms/*/console-log": () =>
        new Response("Linux version 6.1\nlogin: ", {
          headers: { "content-type": "text/plain" },
        }),
    }, seen),
  });
  assertEquals(await run(["vm", "logs", "demo-vm", "--tail-bytes", "4096"], io), 0, io.stderr);
  assertEquals(io.stdout, "Linux version 6.1\nlogin: ");
  assertEquals(seen[0].query.get("tail_bytes"), "4096");
});

Deno.test("vm get: key/value view follows the spec sample and omits unset fields", async () => {
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/vms/*": () =>
        json(
          vmFixture({ status: "failed", error: { code: "qemu_spawn_failed", message: "boom" } }),
        ),
    }),
  });
  assertEquals(await run(["vm", "get", "demo-vm"], io), 0, io.stderr);
  const lines = io.stdout.trimEnd().split("\n");
  assertEquals(lines.slice(0, 3), [`id: ${uuid(1)}`, "name: demo-vm", `owner_id: ${uuid(99)}`]);
  assert(!io.stdout.includes("image_sha256"), "null fields are omitted");
  assert(lines.includes("status: failed"));
  assert(lines.includes("error: qemu_spawn_failed: boom"));
});

Deno.test("node list and get render tables and sections", async () => {
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/nodes": () =>
        json({
          items: [
            nodeFixture(),
            nodeFixture({
              id: uuid(8),
              name: "node-b",
              status: "pending",
              architecture: null,
              accelerator: null,
              cordoned: true,
              last_heartbeat_at: null,
              resources: null,
              created_at: new Date(NOW - 20_000).toISOString(),
            }),
          ],
          next_cursor: null,
        }),
      "GET /v1/nodes/*": () => json(nodeFixture()),
    }),
  });
  assertEquals(await run(["node", "list"], io), 0, io.stderr);
  assertEquals(
    io.stdout,
    "NAME     ARCHITECTURE   STATUS    CORDONED   LAST_HEARTBEAT   AGE\n" +
      "node-a   amd64          ready     no         8s ago           7d\n" +
      "node-b   -              pending   yes        never            20s\n",
  );
  io.stdout = "";
  assertEquals(await run(["node", "get", "node-a"], io), 0, io.stderr);
  assertStringIncludes(io.stdout, "name: node-a\n");
  assertStringIncludes(io.stdout, "migration_host: 10.0.0.5\nmigration_port_range: 49152-49251\n");
  // The spec's layout (developer guide "VM placement": hardware / agent sections).
  assertStringIncludes(io.stdout, "hardware:\n  cpu_cores: used 2/2 cores\n");
  assertStringIncludes(io.stdout, "  memory: used 1024/4096 MiB (2048 MiB available)\n");
  assertStringIncludes(io.stdout, "agent:\n");
  assertStringIncludes(io.stdout, "  last_heartbeat_at: 2026-05-12T19:59:52.000Z (8s ago)\n");
  assertStringIncludes(io.stdout, "pressure:\n  memory: ok (50% free)\n");
  io.stdout = "";
  assertEquals(await run(["node", "get", "node-a", "-o", "yaml"], io), 0, io.stderr);
  assertStringIncludes(io.stdout, "name: node-a\n");
  assertStringIncludes(io.stdout, "accelerator: tcg\n");
});

Deno.test("node join-token create: duration → ttl_seconds; text shows token once", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/nodes/join-tokens": () =>
        json({
          id: uuid(3),
          token: "otxjoin_secret",
          node_name: "node-dev",
          max_uses: 2,
          expires_at: "2026-05-12T21:30:00.000Z",
          ca_fingerprint: `sha256:${"a".repeat(64)}`,
        }, 201),
    }, seen),
  });
  const code = await run(
    [
      "node",
      "join-token",
      "create",
      "--node-name",
      "node-dev",
      "--ttl",
      "1h30m",
      "--max-uses",
      "2",
    ],
    io,
  );
  assertEquals(code, 0, io.stderr);
  assertEquals(seen[0].body, { node_name: "node-dev", ttl_seconds: 5400, max_uses: 2 });
  assertStringIncludes(io.stdout, "token: otxjoin_secret\n");
  assertStringIncludes(io.stdout, "node: node-dev\n");
  assertStringIncludes(io.stdout, "expires_at: 2026-05-12T21:30:00.000Z\n");
  assertStringIncludes(io.stdout, `ca_fingerprint: sha256:${"a".repeat(64)}\n`);
  assertStringIncludes(io.stdout, "shown once");

  const bad = fakeIo({ env: API, fetch: routesFetch({}) });
  assertEquals(
    await run(["node", "join-token", "create", "--node-name", "x", "--ttl", "10x"], bad),
    1,
  );
  assertStringIncludes(bad.stderr, "--ttl <duration>' argument '10x' is invalid");
});

Deno.test("config add cluster: prompts on a TTY (password masked) and stores only the token", async () => {
  const root = await Deno.makeTempDir();
  try {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: { HOME: root },
      tty: true,
      answers: ["lab", "http://cp.test:8080/", "admin@otherix.local", "s3cret pass"],
      fetch: routesFetch({
        "POST /v1/auth/login": () =>
          json({
            access_token: "jwt-1",
            token_type: "Bearer",
            expires_in: 900,
            expires_at: "2026-05-12T20:15:00.000Z",
          }),
        "POST /v1/users/me/api-tokens": () =>
          json({
            id: uuid(4),
            name: "otherix-cli@testhost",
            description: null,
            created_at: "2026-05-12T20:00:00.000Z",
            expires_at: null,
            plaintext_token: "otx_minted0123456789abcdef",
          }, 201),
      }, seen),
    });
    assertEquals(await run(["config", "add", "cluster"], io), 0, io.stderr);
    assertEquals(io.prompts, ["Cluster name: ", "Server URL: ", "Login (email): ", "Password: "]);
    assertEquals(io.stdout, "cluster added: name=lab server=http://cp.test:8080 current=true\n");
    assertEquals(seen[0].body, { email: "admin@otherix.local", password: "s3cret pass" });
    assertEquals(seen[1].auth, "Bearer jwt-1");
    assertEquals((seen[1].body as Record<string, unknown>).name, "otherix-cli@testhost");
    const text = await Deno.readTextFile(`${root}/.otherix/config`);
    assert(!text.includes("s3cret"), "the password is never stored");
    const cfg = await loadConfig(`${root}/.otherix/config`);
    assertEquals(cfg.clusters, [{
      name: "lab",
      server: "http://cp.test:8080",
      token: "otx_minted0123456789abcdef",
    }]);

    // show (masked / revealed), remove with TTY confirmation.
    const show = fakeIo({ env: { HOME: root } });
    assertEquals(await run(["config", "show"], show), 0, show.stderr);
    assertEquals(
      show.stdout,
      "name: lab\nserver: http://cp.test:8080\ntoken: otx_mint…(masked)\ncurrent: true\n",
    );
    show.stdout = "";
    assertEquals(await run(["config", "show", "lab", "--show-token"], show), 0);
    assertStringIncludes(show.stdout, "token: otx_minted0123456789abcdef\n");

    const keep = fakeIo({ env: { HOME: root }, tty: true, answers: ["N"] });
    assertEquals(await run(["config", "remove", "lab"], keep), 1);
    assertEquals((await loadConfig(`${root}/.otherix/config`)).clusters.length, 1);
    const drop = fakeIo({ env: { HOME: root }, tty: true, answers: ["y"] });
    assertEquals(await run(["config", "remove", "lab"], drop), 0, drop.stderr);
    assertEquals(drop.stdout, "cluster removed: lab\n");
    assertEquals((await loadConfig(`${root}/.otherix/config`)).clusters, []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("config add cluster: non-TTY with missing values is a usage error naming them", async () => {
  const io = fakeIo({
    env: { HOME: "/nonexistent", OTHERIX_LOGIN: "a@b.c" },
    fetch: routesFetch({}),
  });
  assertEquals(await run(["config", "add", "cluster", "--name", "x"], io), 1);
  assertStringIncludes(
    io.stderr,
    "error: missing --server (or $OTHERIX_SERVER), --password (or $OTHERIX_PASSWORD)",
  );
  assertStringIncludes(io.stderr, "not a terminal");
});

Deno.test("names that URL resolution would drop or climb are usage errors, no request sent", async () => {
  for (
    const args of [
      ["vm", "get", ""],
      ["vm", "get", "."],
      ["vm", "delete", "..", "--force"],
      ["vm", "logs", ".."],
      ["node", "get", ""],
    ]
  ) {
    const seen: Seen[] = [];
    const io = fakeIo({ env: API, fetch: routesFetch({}, seen) });
    const code = await run(args, io);
    assertEquals(code, 1, args.join(" "));
    assertStringIncludes(io.stderr, "error: invalid name", args.join(" "));
    assertEquals(seen.map((s) => `${s.method} ${s.path}`), [], args.join(" "));
  }
  // An interactive delete refuses the name before asking for confirmation.
  const io = fakeIo({ env: API, tty: true, answers: ["y"], fetch: routesFetch({}) });
  assertEquals(await run(["vm", "delete", "."], io), 1);
  assertEquals(io.prompts, []);
});
