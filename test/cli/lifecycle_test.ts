/**
 * In-process tests of the lifecycle verbs, `--wait` over the event stream and `--watch`,
 * through `run()` with a fake Io and an in-process API (scripted JSON and Server-Sent Events
 * responses). The same commands run as real processes against a real control plane in
 * `lifecycle_process_test.ts`.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import type { Vm } from "../../shared/api/vms.ts";
import type { Task } from "../../shared/api/tasks.ts";
import { fakeIo, json, routesFetch, type Seen, taskFixture, uuid, vmFixture } from "./fixtures.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };

/** One SSE frame of `GET /v1/events`. */
function frame(event: string, data: unknown, id?: string): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n${id ? `id: ${id}\n` : ""}\n`;
}

function taskEvent(type: string, task: Task, revision: string, id = true): string {
  return frame(
    type,
    { revision, kind: "task", type, name: task.id, object: task },
    id ? revision : undefined,
  );
}

function vmEvent(type: string, vm: Vm | null, name: string, revision: string): string {
  return frame(type, { revision, kind: "vm", type, name, object: vm }, revision);
}

/**
 * An event-stream response sending `chunks`, then staying open until the client cancels it
 * (`open`), or ending.
 */
function sse(chunks: string[], open = false): Response {
  const enc = new TextEncoder();
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) return controller.enqueue(enc.encode(chunks[i++]));
      if (!open) return controller.close();
      return new Promise<void>(() => {}); // until cancelled
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

const VERBS: [string, string[], unknown][] = [
  ["start", [], {}],
  ["stop", ["--timeout", "2m"], { timeout_seconds: 120 }],
  ["poweroff", [], {}],
  ["reboot", ["--timeout", "45"], { timeout_seconds: 45 }],
  ["pause", [], {}],
  ["resume", [], {}],
  ["reset", [], {}],
];

Deno.test("vm <verb>: POST /v1/vms/{name}/{verb} with its body; prints the task", async (t) => {
  for (const [verb, flags, body] of VERBS) {
    await t.step(verb, async () => {
      const seen: Seen[] = [];
      const task = taskFixture({ id: uuid(70), type: `vm.${verb}` as Task["type"] });
      const io = fakeIo({
        env: API,
        fetch: routesFetch({ [`POST /v1/vms/demo-vm/${verb}`]: () => json(task, 202) }, seen),
      });
      assertEquals(await run(["vm", verb, "demo-vm", ...flags], io), 0, io.stderr);
      assertEquals(io.stdout, `vm demo-vm ${verb} task=${uuid(70)}\n`);
      assertEquals(seen.map((s) => [s.method, s.path, s.body]), [
        ["POST", `/v1/vms/demo-vm/${verb}`, body],
      ]);
      const asJson = fakeIo({
        env: API,
        fetch: routesFetch({ [`POST /v1/vms/demo-vm/${verb}`]: () => json(task, 202) }),
      });
      assertEquals(await run(["vm", verb, "demo-vm", "-o", "json"], asJson), 0);
      assertEquals(JSON.parse(asJson.stdout).type, `vm.${verb}`);
    });
  }
  await t.step("--timeout exists on stop and reboot only, and must be a duration", async () => {
    const io = fakeIo({ env: API, fetch: routesFetch({}) });
    assertEquals(await run(["vm", "pause", "demo-vm", "--timeout", "5s"], io), 1);
    assertStringIncludes(io.stderr, "unknown option '--timeout'");
    const bad = fakeIo({ env: API, fetch: routesFetch({}) });
    assertEquals(await run(["vm", "stop", "demo-vm", "--timeout", "soon"], bad), 1);
    assertStringIncludes(bad.stderr, "must be a duration");
  });
});

Deno.test("vm <verb>: 409s say what is in the way", async () => {
  const invalid = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/vms/demo-vm/start": () =>
        json({
          error: {
            code: "vm_invalid_state",
            message: 'cannot start vm "demo-vm"',
            details: { status: "running" },
          },
        }, 409),
    }),
  });
  assertEquals(await run(["vm", "start", "demo-vm"], invalid), 1);
  assertEquals(
    invalid.stderr,
    'api_error: vm_invalid_state: cannot start vm "demo-vm" (vm demo-vm is running)\n',
  );

  const busy = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/vms/demo-vm/stop": () =>
        json({
          error: {
            code: "vm_busy",
            message: "a vm.start task is in progress",
            details: { task_id: uuid(5) },
          },
        }, 409),
    }),
  });
  assertEquals(await run(["vm", "stop", "demo-vm"], busy), 1);
  assertStringIncludes(
    busy.stderr,
    `api_error: vm_busy: a vm.start task is in progress (task ${uuid(5)} is in flight;`,
  );
});

Deno.test("vm create --restart-policy; vm delete --force sends ?force=true", async () => {
  const seen: Seen[] = [];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "POST /v1/vms": () => json(taskFixture(), 202),
      "DELETE /v1/vms/*": () => json(taskFixture({ type: "vm.delete" }), 202),
    }, seen),
  });
  assertEquals(
    await run(
      ["vm", "create", "x", "--image-url", "http://i/a.img", "--restart-policy", "never"],
      io,
    ),
    0,
    io.stderr,
  );
  assertEquals((seen[0].body as { restart_policy: string }).restart_policy, "never");
  assertEquals(await run(["vm", "delete", "x", "--force"], io), 0, io.stderr);
  assertEquals(seen[1].query.get("force"), "true");

  const bad = fakeIo({ env: API, fetch: routesFetch({}) });
  assertEquals(
    await run(
      ["vm", "create", "x", "--image-url", "http://i/a.img", "--restart-policy", "maybe"],
      bad,
    ),
    1,
  );
  assertStringIncludes(bad.stderr, "Allowed choices are always, on-failure, never");
});

Deno.test("vm get: lifecycle fields (spec Step 4 order; last exit and last task)", async () => {
  const vm = vmFixture({
    status: "stopped",
    desired_phase: "stopped",
    restart_policy: "never",
    restart_count: 2,
    image_format: "qcow2",
    last_exit: { reason: "crashed", at: "2026-05-12T19:58:00.000Z", detail: "signal SIGKILL" },
    last_task: {
      id: uuid(51),
      type: "vm.start",
      status: "failed",
      error: { code: "qemu_spawn_failed", message: "no such file" },
    },
    error: { code: "qemu_spawn_failed", message: "no such file" },
  });
  const io = fakeIo({ env: API, fetch: routesFetch({ "GET /v1/vms/*": () => json(vm) }) });
  assertEquals(await run(["vm", "get", "demo-vm"], io), 0, io.stderr);
  assertEquals(
    io.stdout,
    [
      `id: ${uuid(1)}`,
      "name: demo-vm",
      `owner_id: ${uuid(99)}`,
      "image_url: http://127.0.0.1:9000/images/otherix-test.img",
      "image: otherix-test.img",
      "image_format: qcow2",
      "pool: default",
      "node: node-a",
      "architecture: amd64",
      "vcpus: 2",
      "memory_mb: 2048",
      "disk_gib: 10",
      "status: stopped",
      "desired_phase: stopped",
      "restart_policy: never",
      "restart_count: 2",
      "last_exit:",
      "  reason: crashed",
      "  at: 2026-05-12T19:58:00.000Z",
      "  detail: signal SIGKILL",
      "last_task:",
      `  id: ${uuid(51)}`,
      "  type: vm.start",
      "  status: failed",
      "  error: qemu_spawn_failed: no such file",
      "created_at: 2026-05-12T19:55:00.000Z",
      "updated_at: 2026-05-12T19:56:00.000Z",
      "",
    ].join("\n"),
  );
});

Deno.test("--wait follows the task's events and returns on the terminal one", async (t) => {
  const pending = taskFixture({ id: uuid(70), type: "vm.stop" });
  const running = { ...pending, status: "running" as const, progress: "ACPI power button" };
  const done = { ...running, status: "succeeded" as const, progress: null };

  await t.step("non-TTY: a line per change; the VM's state at the end", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/vms/demo-vm/stop": () => json(pending, 202),
        "GET /v1/events": () =>
          sse([
            taskEvent("added", pending, "7", false),
            frame("sync", { revision: "9" }, "9"),
            taskEvent("modified", running, "10"),
            taskEvent("modified", done, "11"),
          ], true), // the stream stays open: the wait must return on the event itself
        "GET /v1/vms/demo-vm": () => json(vmFixture({ status: "stopped" })),
      }, seen),
    });
    assertEquals(await run(["vm", "stop", "demo-vm", "--wait"], io), 0, io.stderr);
    assertEquals(
      io.stdout,
      `vm demo-vm stop task=${uuid(70)}\nvm demo-vm stopped task=${uuid(70)}\n`,
    );
    assertEquals(
      io.stderr,
      `task=${uuid(70)} status=pending\n` +
        `task=${uuid(70)} status=running: ACPI power button\n` +
        `task=${uuid(70)} status=succeeded\n`,
    );
    const events = seen.find((s) => s.path === "/v1/events")!;
    assertEquals(
      [events.query.get("kind"), events.query.get("name"), events.query.get("since")],
      ["task", uuid(70), null],
    );
    assert(!seen.some((s) => s.path.startsWith("/v1/tasks/")), "no polling");
  });

  await t.step("TTY: dots, pings included; a failed task is api_error", async () => {
    const failed = {
      ...running,
      status: "failed" as const,
      error: { code: "agent_unreachable", message: "node node-a did not answer" },
    };
    const io = fakeIo({
      env: API,
      tty: true,
      fetch: routesFetch({
        "POST /v1/vms/demo-vm/stop": () => json(pending, 202),
        "GET /v1/events": () =>
          sse([
            taskEvent("added", running, "7", false),
            frame("sync", { revision: "9" }, "9"),
            ": ping\n\n",
            taskEvent("modified", failed, "10"),
          ]),
      }),
    });
    assertEquals(await run(["vm", "stop", "demo-vm", "--wait"], io), 1);
    assertEquals(io.stderr, "...\napi_error: agent_unreachable: node node-a did not answer\n");
  });

  await t.step("a broken stream is resumed from its last id", async () => {
    const seen: Seen[] = [];
    let connections = 0;
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/vms/demo-vm/stop": () => json(pending, 202),
        "GET /v1/events": () =>
          ++connections === 1
            ? sse([taskEvent("added", pending, "7", false), frame("sync", { revision: "9" }, "9")])
            : sse([taskEvent("modified", done, "12")]),
        "GET /v1/vms/demo-vm": () => json(vmFixture({ status: "stopped" })),
      }, seen),
    });
    assertEquals(await run(["vm", "stop", "demo-vm", "--wait"], io), 0, io.stderr);
    const streams = seen.filter((s) => s.path === "/v1/events");
    assertEquals(streams.map((s) => s.query.get("since")), [null, "9"]);
  });

  await t.step("a task that does not exist, or is deleted, is task_not_found", async () => {
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/vms/demo-vm/stop": () => json(pending, 202),
        "GET /v1/events": () => sse([frame("sync", { revision: "9" }, "9")], true),
      }),
    });
    assertEquals(await run(["vm", "stop", "demo-vm", "--wait"], io), 1);
    assertStringIncludes(io.stderr, `api_error: task_not_found: task ${uuid(70)} not found`);
  });

  await t.step("compacted resume point: starts over with a fresh snapshot", async () => {
    const seen: Seen[] = [];
    let connections = 0;
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/vms/demo-vm/stop": () => json(pending, 202),
        "GET /v1/events": () => {
          connections++;
          if (connections === 1) {
            return sse([
              taskEvent("added", pending, "7", false),
              frame("sync", { revision: "9" }, "9"),
            ]);
          }
          if (connections === 2) {
            return json({ error: { code: "revision_compacted", message: "gone" } }, 410);
          }
          return sse([
            taskEvent("added", done, "30", false),
            frame("sync", { revision: "31" }, "31"),
          ]);
        },
        "GET /v1/vms/demo-vm": () => json(vmFixture({ status: "stopped" })),
      }, seen),
    });
    assertEquals(await run(["vm", "stop", "demo-vm", "--wait"], io), 0, io.stderr);
    assertEquals(
      seen.filter((s) => s.path === "/v1/events").map((s) => s.query.get("since")),
      [null, "9", null],
    );
  });
});

Deno.test("vm list --watch: the table, then a row per change, until Ctrl+C (exit 0)", async () => {
  const a = vmFixture({ name: "demo-vm", created_at: "2026-05-12T19:59:00.000Z" });
  const b = vmFixture({
    id: uuid(2),
    name: "pinned-vm",
    status: "creating",
    created_at: "2026-05-12T19:59:40.000Z",
  });
  let cancelled = false;
  const enc = new TextEncoder();
  const chunks = [
    vmEvent("added", a, "demo-vm", "3"),
    vmEvent("added", b, "pinned-vm", "4"),
    frame("sync", { revision: "5" }, "5"),
    vmEvent("modified", { ...b, status: "running" }, "pinned-vm", "6"),
    vmEvent("deleted", null, "demo-vm", "7"),
  ];
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/events": () => {
        let i = 0;
        return new Response(
          new ReadableStream<Uint8Array>({
            pull(c) {
              if (i < chunks.length) return c.enqueue(enc.encode(chunks[i++]));
              return new Promise<void>(() => {}); // open until cancelled
            },
            cancel() {
              cancelled = true;
            },
          }),
          { headers: { "content-type": "text/event-stream" } },
        );
      },
    }),
  });
  const out = io.out;
  io.out = (text) => {
    out(text);
    if (text.includes(" deleted ")) io.interrupt(); // everything shown: the user presses Ctrl+C
  };
  assertEquals(await run(["vm", "list", "--watch"], io), 0, io.stderr);
  assertEquals(
    io.stdout,
    "NAME        STATUS     NODE     POOL      IMAGE              AGE\n" +
      "demo-vm     running    node-a   default   otherix-test.img   1m\n" +
      "pinned-vm   creating   node-a   default   otherix-test.img   20s\n" +
      "pinned-vm   running    node-a   default   otherix-test.img   20s\n" +
      "demo-vm     deleted    node-a   default   otherix-test.img   1m\n",
  );
  assert(cancelled, "the stream was closed");
});

Deno.test("--watch across a compacted resume point reports only what changed", async () => {
  const a = vmFixture({ name: "a" }), b = vmFixture({ id: uuid(2), name: "b" });
  const c = vmFixture({ id: uuid(3), name: "c" });
  const seen: Seen[] = [];
  let connections = 0;
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/events": () => {
        connections++;
        if (connections === 1) {
          return sse([
            vmEvent("added", a, "a", "3"),
            vmEvent("added", b, "b", "4"),
            frame("sync", { revision: "5" }, "5"),
            frame("error", { code: "revision_compacted", message: "compacted" }),
          ]);
        }
        return sse([
          vmEvent("added", a, "a", "3"), // unchanged: not reported again
          vmEvent("added", c, "c", "8"),
          frame("sync", { revision: "9" }, "9"),
        ], true);
      },
    }, seen),
  });
  const out = io.out;
  io.out = (text) => {
    out(text);
    if (text.startsWith("b ")) io.interrupt();
  };
  assertEquals(await run(["vm", "list", "--watch", "-o", "table"], io), 0, io.stderr);
  assertEquals(io.stdout.split("\n").filter(Boolean).map((l) => l.split(/\s+/).slice(0, 2)), [
    ["NAME", "STATUS"],
    ["a", "running"],
    ["b", "running"],
    ["c", "running"], // appeared meanwhile
    ["b", "deleted"], // gone meanwhile
  ]);
  assertEquals(seen.map((s) => s.query.get("since")), [null, null]);
});

Deno.test("vm get --watch -o yaml: one document per change; a missing VM is vm_not_found", async () => {
  const vm = vmFixture();
  const io = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/events": () =>
        sse([
          vmEvent("added", vm, "demo-vm", "3"),
          frame("sync", { revision: "5" }, "5"),
          vmEvent("modified", { ...vm, status: "stopping" }, "demo-vm", "6"),
          frame("error", { code: "internal_error", message: "watch failed: disk full" }),
        ]),
    }),
  });
  assertEquals(await run(["vm", "get", "demo-vm", "--watch", "-o", "yaml"], io), 1);
  const docs = io.stdout.split("---\n").filter(Boolean);
  assertEquals(docs.length, 2);
  assertStringIncludes(docs[0], "status: running\n");
  assertStringIncludes(docs[1], "status: stopping\n");
  assertEquals(io.stderr, "api_error: internal_error: watch failed: disk full\n");

  const missing = fakeIo({
    env: API,
    fetch: routesFetch({
      "GET /v1/events": () => sse([frame("sync", { revision: "5" }, "5")], true),
    }),
  });
  assertEquals(await run(["vm", "get", "ghost", "--watch"], missing), 1);
  assertEquals(missing.stderr, 'api_error: vm_not_found: vm "ghost" not found\n');

  const old = fakeIo({ env: API, fetch: routesFetch({}) });
  assertEquals(await run(["vm", "list", "--watch"], old), 1);
  assertStringIncludes(old.stderr, "api_error: not_found: --watch needs the event stream");
});
