/**
 * The real CLI process (`deno run` + the `otherix` sandbox flags + cli/main.ts) against a real
 * control plane started in-process, through a TCP proxy that records the requests and can
 * break connections: lifecycle verbs reach the server's strict schemas, `--wait` follows the
 * event stream and resumes it when it drops, `--watch` prints changes until SIGINT.
 *
 * The control plane runs without task workers: the test plays the worker by writing the task
 * and VM records (as a worker would), so each step is deterministic and needs no agent or
 * QEMU. VMs live on a node that does not exist, which the VM controller leaves alone.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { type ControlPlane, startControlPlane } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { keys, type TaskRecord, type VmRecord } from "../../cp/repo/records.ts";
import type { Store } from "../../cp/store/store.ts";
import { getUserByEmail } from "../../cp/users/service.ts";
import { createLogger } from "../../shared/log.ts";
import { runCli, spawnCli } from "./fixtures.ts";
import { TcpProxy } from "./proxy.ts";

interface World {
  cp: ControlPlane;
  store: Store;
  proxy: TcpProxy;
  home: string;
  env: Record<string, string>;
}

async function withCp(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-cp-" });
  const cfg = parseApiConfig(
    `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n` +
      `store:\n  data_dir: ${dir}/data\n` +
      `workers:\n  enabled: false\n` +
      `images:\n  url_policy: {allow_loopback: true}\n`, // loopback image URLs: opt in
  );
  const cp = await startControlPlane(cfg, createLogger("api", "error"), {
    getEnv: (n) =>
      ({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "admin@example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "admin-password",
      })[n],
    host: { hostname: "localhost", addresses: [] },
  });
  const proxy = new TcpProxy(cp.publicPort);
  try {
    const admin = (await getUserByEmail(cp.ctx.store, "admin@example.com"))!;
    const { token } = await issueAccessToken(
      cp.ctx.jwtSecret,
      { sub: admin.id, role: "admin" },
      900,
    );
    await Deno.mkdir(`${dir}/home`);
    await fn({
      cp,
      store: cp.ctx.store,
      proxy,
      home: `${dir}/home`,
      env: { OTHERIX_SERVER: proxy.url, OTHERIX_API_TOKEN: token },
    });
  } finally {
    await proxy.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

function vmRecord(name: string, over: Partial<VmRecord> = {}): VmRecord {
  const ts = new Date().toISOString();
  return {
    id: crypto.randomUUID(),
    name,
    owner_id: crypto.randomUUID(),
    image_url: "http://127.0.0.1:1/images/img.raw",
    image_sha256: null,
    image: "img.raw",
    image_format: "raw",
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 128,
    disk_gib: 1,
    pool: "default",
    node: "no-such-node",
    status: "running",
    desired_phase: "running",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: null,
    error: null,
    created_at: ts,
    updated_at: ts,
    user_data: null,
    pool_path: "/nowhere",
    active_task_id: null,
    last_restart_at: null,
    ...over,
  };
}

async function getVm(store: Store, name: string): Promise<VmRecord | null> {
  return (await store.get<VmRecord>(keys.vm(name)))?.value ?? null;
}

async function getTask(store: Store, id: string): Promise<TaskRecord> {
  return (await store.get<TaskRecord>(keys.task(id)))!.value;
}

Deno.test("process: every lifecycle verb is accepted by the real control plane", async (t) => {
  await withCp(async ({ store, home, env, proxy }) => {
    const verbs: [string, string[], VmRecord["status"], number | undefined][] = [
      ["start", [], "stopped", undefined],
      ["stop", ["--timeout", "90s"], "running", 90],
      ["poweroff", [], "paused", undefined],
      ["reboot", ["--timeout", "2m"], "running", 120],
      ["pause", [], "running", undefined],
      ["resume", [], "paused", undefined],
      ["reset", [], "running", undefined],
    ];
    for (const [verb, flags, status, timeout] of verbs) {
      await t.step(`${verb} (a ${status} VM)`, async () => {
        await store.put(keys.vm(`vm-${verb}`), vmRecord(`vm-${verb}`, { status }));
        const r = await runCli(["vm", verb, `vm-${verb}`, ...flags], { home, env });
        assertEquals(r.code, 0, r.stderr);
        const vm = (await getVm(store, `vm-${verb}`))!;
        assert(vm.active_task_id, "a task was queued");
        assertEquals(r.stdout, `vm vm-${verb} ${verb} task=${vm.active_task_id}\n`);
        const task = await getTask(store, vm.active_task_id);
        assertEquals([task.type, task.params.timeout_seconds], [`vm.${verb}`, timeout]);
        assertStringIncludes(proxy.requestLines().at(-1)!, `POST /v1/vms/vm-${verb}/${verb} `);
      });
    }

    await t.step("a verb the VM's status does not allow: the status is shown", async () => {
      await store.put(keys.vm("vm-up"), vmRecord("vm-up", { status: "running" }));
      const r = await runCli(["vm", "start", "vm-up"], { home, env });
      assertEquals(r.code, 1);
      assertMatch(r.stderr, /^api_error: vm_invalid_state: cannot start vm "vm-up".*\n$/);
      assertEquals(r.stderr.match(/running/g)?.length, 1, "the status, said once");
    });

    await t.step("a verb while another task runs: vm_busy names the task", async () => {
      const busy = (await getVm(store, "vm-stop"))!;
      const r = await runCli(["vm", "poweroff", "vm-stop"], { home, env });
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, "api_error: vm_busy: ");
      assertStringIncludes(r.stderr, busy.active_task_id!);
    });

    await t.step("vm console reaches the console endpoint (refusals are api_error)", async () => {
      const ghost = await runCli(["vm", "console", "ghost"], { home, env });
      assertEquals([ghost.code, ghost.stderr], [
        1,
        'api_error: vm_not_found: vm "ghost" not found\n',
      ]);
      assertStringIncludes(proxy.requestLines().at(-1)!, "POST /v1/vms/ghost/console ");
    });

    await t.step("delete --force --wait: a VM whose node is gone is removed at once", async () => {
      await store.put(keys.vm("orphan"), vmRecord("orphan"));
      const r = await runCli(["vm", "delete", "orphan", "--force", "--wait"], { home, env });
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stdout, /^deleted task=(\S+) status=succeeded\nvm deleted task=\1\n$/);
      assertEquals(await getVm(store, "orphan"), null);
      assertMatch(
        proxy.requestLines().find((l) => l.startsWith("DELETE "))!,
        /^DELETE \/v1\/vms\/orphan\?force=true /,
      );
    });
  });
});

Deno.test("process: vm stop --wait follows the stream, resumes it when it drops", async () => {
  await withCp(async ({ store, home, env, proxy }) => {
    await store.put(keys.vm("demo"), vmRecord("demo"));
    const cli = spawnCli(["vm", "stop", "demo", "--wait"], { home, env });
    try {
      const stream = await proxy.until(
        "the CLI's event stream to sync",
        () => proxy.connections.find((c) => c.received.includes("event: sync")),
      );
      const sync = /event: sync\ndata: \{"revision":"(\d+)"\}/.exec(stream.received)![1];
      const vm = (await getVm(store, "demo"))!;
      const taskId = vm.active_task_id!;
      assertStringIncludes(stream.sent, `GET /v1/events?kind=task&name=${taskId} HTTP/1.1`);

      // The stream drops; while the CLI cannot reconnect, the task runs and finishes.
      proxy.hold();
      stream.cut();
      const task = await getTask(store, taskId);
      const now = () => new Date().toISOString();
      await store.put(keys.task(taskId), {
        ...task,
        status: "running",
        attempts: 1,
        progress: "ACPI power button pressed",
        started_at: now(),
      });
      await store.txn({
        compare: [],
        success: [
          {
            type: "put",
            key: keys.task(taskId),
            value: { ...task, status: "succeeded", attempts: 1, finished_at: now() },
          },
          {
            type: "put",
            key: keys.vm("demo"),
            value: { ...vm, status: "stopped", active_task_id: null },
          },
          { type: "delete", key: keys.activeTask(taskId) },
        ],
      });
      proxy.release();

      const r = await cli.result();
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, `vm demo stop task=${taskId}\nvm demo stopped task=${taskId}\n`);
      assertEquals(
        r.stderr,
        `task=${taskId} status=pending\n` +
          `task=${taskId} status=running: ACPI power button pressed\n` + // replayed, not missed
          `task=${taskId} status=succeeded\n`,
      );
      const streams = proxy.requestLines().filter((l) => l.includes("/v1/events"));
      assertEquals(streams, [
        `GET /v1/events?kind=task&name=${taskId} HTTP/1.1`,
        `GET /v1/events?kind=task&name=${taskId}&since=${sync} HTTP/1.1`,
      ]);
      assert(!proxy.requestLines().some((l) => l.includes("/v1/tasks/")), "no polling");
    } finally {
      proxy.release();
      await cli.result();
    }
  });
});

Deno.test("process: vm list --watch prints a row per change; SIGINT exits 0", async () => {
  await withCp(async ({ store, home, env }) => {
    await store.put(keys.vm("alpha"), vmRecord("alpha"));
    await store.put(keys.vm("beta"), vmRecord("beta", { status: "stopped" }));
    const cli = spawnCli(["vm", "list", "--watch"], { home, env });
    const rows = (out: string) => out.split("\n").filter(Boolean).map((l) => l.split(/\s+/));
    try {
      await cli.until("the table", (out) => rows(out).length === 3);
      assertEquals(rows(cli.stdout).map((r) => r.slice(0, 4)), [
        ["NAME", "STATUS", "NODE", "POOL"],
        ["alpha", "running", "no-such-node", "default"],
        ["beta", "stopped", "no-such-node", "default"],
      ]);
      const beta = (await getVm(store, "beta"))!;
      await store.put(keys.vm("beta"), { ...beta, status: "running" });
      await cli.until("beta's row", (out) => rows(out).length === 4);
      await store.delete(keys.vm("alpha"));
      await cli.until("alpha's last row", (out) => rows(out).length === 5);
      assertEquals(rows(cli.stdout).slice(3).map((r) => r.slice(0, 2)), [
        ["beta", "running"],
        ["alpha", "deleted"],
      ]);
      // Rows keep the table's columns.
      const lines = cli.stdout.split("\n");
      assertEquals(lines[3].indexOf("no-such-node"), lines[0].indexOf("NODE"));
    } finally {
      cli.child.kill("SIGINT");
    }
    const r = await cli.result();
    assertEquals([r.code, r.stderr], [0, ""]);
  });
});

Deno.test("process: vm get --watch -o json prints one document per change", async () => {
  await withCp(async ({ store, home, env }) => {
    await store.put(keys.vm("solo"), vmRecord("solo"));
    const cli = spawnCli(["vm", "get", "solo", "--watch", "-o", "json"], { home, env });
    const docs = (out: string) => out.split(/(?<=^\})\n/m).filter((d) => d.trim());
    try {
      await cli.until("the VM", (out) => docs(out).length === 1);
      const vm = (await getVm(store, "solo"))!;
      await store.put(keys.vm("solo"), { ...vm, status: "paused", desired_phase: "paused" });
      await cli.until("the change", (out) => docs(out).length === 2);
      const parsed = docs(cli.stdout).map((d) => JSON.parse(d));
      assertEquals(parsed.map((d) => [d.name, d.status]), [["solo", "running"], [
        "solo",
        "paused",
      ]]);
      assert(!("user_data" in parsed[0]), "the served view");
    } finally {
      cli.child.kill("SIGINT");
    }
    assertEquals((await cli.result()).code, 0);
  });
});
