// deno-lint-ignore-file no-explicit-any -- JSON frames are inspected dynamically
/**
 * The resource event stream (`GET /v1/events`, cp/events/) against a real control plane
 * started in-process (its store, its JWT secret, its users): the test serves `eventRoutes`
 * with sources it defines from the control plane's views (vmView, taskView) on a real HTTP
 * server and reads the Server-Sent Events with `eventsource-parser`, as a client would.
 *
 * Records are written straight into the store (the stream follows the store, whoever writes):
 * VMs on a node that does not exist, which the VM controller leaves alone, and tasks outside
 * the worker queue.
 */
import { Hono } from "hono";
import { z } from "zod";
import { createParser } from "eventsource-parser";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import type { AppEnv } from "../../cp/auth/middleware.ts";
import type { CpContext } from "../../cp/context.ts";
import { eventRoutes, type EventRoutesOptions, type EventSource } from "../../cp/events/mod.ts";
import { matchesName } from "../../cp/events/source.ts";
import { validate } from "../../cp/routes/validate.ts";
import { keys, type TaskRecord, type VmRecord } from "../../cp/repo/records.ts";
import type { Store } from "../../cp/store/store.ts";
import { taskView } from "../../cp/tasks/queue.ts";
import { createUser, getUserByEmail } from "../../cp/users/service.ts";
import { vmView } from "../../cp/vms/service.ts";
import { errorHandler, notFoundHandler } from "../../shared/http.ts";
import type { Role } from "../../shared/rbac.ts";
import { LogCapture, startTestCp, until } from "./fixtures.ts";

// ---------------------------------------------------------------------------------------------
// Fixtures

const TS = "2026-05-12T19:55:00.000Z";

function vmRecord(name: string, over: Partial<VmRecord> = {}): VmRecord {
  return {
    id: crypto.randomUUID(),
    name,
    owner_id: "00000000-0000-4000-8000-000000000099",
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
    status: "stopped",
    desired_phase: "stopped",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: null,
    error: null,
    created_at: TS,
    updated_at: TS,
    user_data: "#cloud-config\n",
    pool_path: "/nowhere",
    active_task_id: null,
    last_restart_at: null,
    ...over,
  };
}

function taskRecord(over: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id: crypto.randomUUID(),
    type: "vm.stop",
    status: "pending",
    resource: { kind: "vm", name: "web", id: crypto.randomUUID() },
    reason: null,
    attempts: 0,
    progress: null,
    progress_bytes: null,
    error: null,
    created_at: TS,
    updated_at: TS,
    started_at: null,
    finished_at: null,
    params: {},
    cancel_requested: false,
    ...over,
  };
}

const vmSource: EventSource = {
  kind: "vm",
  prefix: keys.vms,
  permission: "vm:read",
  view: (v) => vmView(v as VmRecord),
  nameOf: (v) => (v as VmRecord).name,
};

const taskSource: EventSource = {
  kind: "task",
  prefix: "/tasks/",
  permission: "task:read",
  view: (t) => taskView(t as TaskRecord),
  nameOf: (t) => (t as TaskRecord).id,
};

/**
 * A third kind whose permission some roles lack (every role may read VMs, tasks, nodes and
 * pools, so the test invents the restriction): pool instances readable with
 * `storage_pool:manage`, and hidden from callers whose id is not in `visibleTo` (`view` null).
 */
function poolSource(visibleTo: Set<string> | null = null): EventSource {
  return {
    kind: "pool",
    prefix: keys.pools,
    permission: "storage_pool:manage",
    view: (p, user) => (visibleTo && !visibleTo.has(user.id) ? null : p),
    nameOf: (p) => `${(p as { name: string }).name}/${(p as { node: string }).node}`,
  };
}

/** The store revision of a write (a transaction returns it). */
async function put(store: Store, key: string, value: unknown): Promise<string> {
  return (await store.txn({ compare: [], success: [{ type: "put", key, value }] })).revision;
}

async function del(store: Store, key: string): Promise<string> {
  const res = await store.txn({
    compare: [{ key, absent: false }],
    success: [{ type: "delete", key }],
  });
  assert(res.succeeded, `${key} existed`);
  return res.revision;
}

/** A store whose watches are counted (the test's view on "the watch was cleaned up"). */
function countingStore(store: Store): { store: Store; active: () => number } {
  let active = 0;
  const watch: Store["watch"] = (prefix, cb, opts) => {
    const cancel = store.watch(prefix, cb, opts);
    active++;
    let done = false;
    return () => {
      if (!done) active--;
      done = true;
      cancel();
    };
  };
  const wrapped = new Proxy(store, {
    get(target, prop) {
      if (prop === "watch") return watch;
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { store: wrapped, active: () => active };
}

interface Served {
  url: string;
  close(): Promise<void>;
}

/** Serves `eventRoutes(ctx, sources, opts)` at `/v1/events` on 127.0.0.1:0. */
function serveEvents(ctx: CpContext, sources: EventSource[], opts: EventRoutesOptions): Served {
  const app = new Hono<AppEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.route("/v1/events", eventRoutes(ctx, sources, opts));
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

// ---------------------------------------------------------------------------------------------
// An SSE client (what a browser's EventSource or the CLI does)

interface Frame {
  event: string;
  id?: string;
  data: any;
}

class Sse {
  frames: Frame[] = [];
  comments = 0;
  ended = false;
  #read = 0;
  #notify: (() => void) | null = null;
  #abort = new AbortController();
  #done: Promise<void> = Promise.resolve();

  /** Connects; returns the error response instead when the server refused the stream. */
  static async open(
    url: string,
    token: string,
    headers: Record<string, string> = {},
    opts: { paused?: boolean } = {},
  ): Promise<Sse | { status: number; body: any }> {
    const sse = new Sse();
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", ...headers },
      signal: sse.#abort.signal,
    });
    if (res.status !== 200) return { status: res.status, body: await res.json() };
    assertMatch(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    sse.#body = res.body!;
    if (!opts.paused) sse.start();
    return sse;
  }

  #body: ReadableStream<Uint8Array> | null = null;
  #reader: ReadableStreamDefaultReader<string> | null = null;

  /** Starts reading (a `paused` client reads nothing until then). */
  start(): void {
    const parser = createParser({
      onEvent: (m) => {
        this.frames.push({ event: m.event ?? "message", id: m.id, data: JSON.parse(m.data) });
        this.#notify?.();
      },
      onComment: () => {
        this.comments++;
        this.#notify?.();
      },
    });
    const reader = this.#body!.pipeThrough(new TextDecoderStream()).getReader();
    this.#reader = reader;
    this.#done = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parser.feed(value);
        }
      } catch {
        // aborted by close()
      } finally {
        this.ended = true;
        this.#notify?.();
      }
    })();
  }

  /** Waits until `pred` holds (5 s). */
  async until(what: string, pred: () => boolean, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames)}`);
      }
      const timer = setTimeout(() => this.#notify?.(), deadline - Date.now());
      await new Promise<void>((r) => (this.#notify = r));
      clearTimeout(timer);
    }
  }

  /** The next unread frame. */
  async next(): Promise<Frame> {
    await this.until("a frame", () => this.frames.length > this.#read || this.ended);
    if (this.frames.length <= this.#read) throw new Error("stream ended");
    return this.frames[this.#read++];
  }

  /** Reads frames up to and including `sync`. */
  async untilSync(): Promise<{ added: Frame[]; sync: Frame }> {
    const added: Frame[] = [];
    for (;;) {
      const f = await this.next();
      if (f.event === "sync") return { added, sync: f };
      added.push(f);
    }
  }

  /** Waits for the end of the stream. */
  async end(): Promise<void> {
    await this.until("the end of the stream", () => this.ended);
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.#reader?.cancel().catch(() => {});
    await this.#done;
  }
}

async function openOk(url: string, token: string, headers: Record<string, string> = {}) {
  const sse = await Sse.open(url, token, headers);
  assert(sse instanceof Sse, `stream refused: ${JSON.stringify(sse)}`);
  return sse;
}

// ---------------------------------------------------------------------------------------------

interface World {
  cp: ControlPlane;
  store: Store;
  token(role?: Role): Promise<{ token: string; id: string }>;
}

async function withCp(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-events-" });
  const cp = await startTestCp(dir, new LogCapture());
  const users = new Map<Role, { token: string; id: string }>();
  try {
    await fn({
      cp,
      store: cp.ctx.store,
      token: async (role: Role = "admin") => {
        let u = users.get(role);
        if (!u) {
          const rec = role === "admin"
            ? (await getUserByEmail(cp.ctx.store, "admin@example.com"))!
            : await createUser(cp.ctx.store, {
              email: `${role}@example.com`,
              password: "pw",
              role,
            });
          const issued = await issueAccessToken(cp.ctx.jwtSecret, { sub: rec.id, role }, 900);
          u = { token: issued.token, id: rec.id };
          users.set(role, u);
        }
        return u;
      },
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("events: snapshot, sync, then live changes in revision order", async (t) => {
  await withCp(async ({ cp, store, token }) => {
    const shutdown = new AbortController();
    const api = serveEvents(cp.ctx, [vmSource, taskSource], {
      signal: shutdown.signal,
      pageSize: 2, // the snapshot spans pages
    });
    const admin = (await token()).token;
    try {
      const a = vmRecord("vm-a"), b = vmRecord("vm-b"), c = vmRecord("vm-c");
      const t1 = taskRecord();
      for (const v of [a, b, c]) await put(store, keys.vm(v.name), v);
      await put(store, keys.task(t1.id), t1);
      await put(store, `/tasks-archive/${t1.id}`, t1); // under "/tasks", not "/tasks/"

      const sse = await openOk(`${api.url}/v1/events`, admin);

      await t.step("every current object is added, then sync carries the revision", async () => {
        const { added, sync } = await sse.untilSync();
        assertEquals(added.map((f) => [f.event, f.data.kind, f.data.name, f.id]), [
          ["added", "vm", "vm-a", undefined],
          ["added", "vm", "vm-b", undefined],
          ["added", "vm", "vm-c", undefined],
          ["added", "task", t1.id, undefined],
        ]);
        assertEquals(added[0].data.object, vmView(a));
        assertEquals(added[3].data.object, taskView(t1));
        assert(!("user_data" in added[0].data.object), "the served view, not the record");
        assertEquals(sync.data.revision, await store.currentRevision());
        assertEquals(sync.id, sync.data.revision);
      });

      await t.step("changes arrive as modified / deleted / added with id = revision", async () => {
        const r1 = await put(store, keys.vm("vm-a"), { ...a, status: "running" });
        const r2 = await del(store, keys.vm("vm-b"));
        const t2 = taskRecord({ type: "vm.start" });
        const r3 = await put(store, keys.task(t2.id), t2);
        const frames = [await sse.next(), await sse.next(), await sse.next()];
        assertEquals(frames.map((f) => [f.event, f.id, f.data.revision, f.data.name]), [
          ["modified", r1, r1, "vm-a"],
          ["deleted", r2, r2, "vm-b"],
          ["added", r3, r3, t2.id],
        ]);
        assertEquals(frames[0].data.object.status, "running");
        assertEquals(frames[1].data.object, null);
        assertEquals(frames[2].data.kind, "task");
      });

      await t.step("one revision's frames carry one id, on the last frame", async () => {
        const d = vmRecord("vm-d"),
          t3 = taskRecord({ resource: { kind: "vm", name: "vm-d", id: d.id } });
        const { revision } = await store.txn({
          compare: [],
          success: [
            { type: "put", key: keys.vm("vm-d"), value: d },
            { type: "put", key: keys.task(t3.id), value: t3 },
          ],
        });
        const frames = [await sse.next(), await sse.next()];
        assertEquals(frames.map((f) => [f.event, f.id, f.data.revision, f.data.name]), [
          ["added", undefined, revision, t3.id], // a transaction's events in key order
          ["added", revision, revision, "vm-d"],
        ]);
      });

      await t.step("a server shutdown ends the stream without an error frame", async () => {
        shutdown.abort();
        await sse.end();
        assertEquals(sse.frames.filter((f) => f.event === "error"), []);
      });
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: resuming with Last-Event-ID or since= misses nothing, repeats nothing", async () => {
  await withCp(async ({ cp, store, token }) => {
    const api = serveEvents(cp.ctx, [vmSource, taskSource], {});
    const admin = (await token()).token;
    try {
      const web = vmRecord("web");
      await put(store, keys.vm("web"), web);
      const first = await openOk(`${api.url}/v1/events?kind=vm`, admin);
      await first.untilSync();
      const r1 = await put(store, keys.vm("web"), { ...web, status: "running" });
      const seen = await first.next();
      assertEquals([seen.event, seen.id], ["modified", r1]);
      await first.close();

      // While nobody listens: a modification, a new VM, a deletion, and a task (other kind).
      const r2 = await put(store, keys.vm("web"), { ...web, status: "stopping" });
      const r3 = await put(store, keys.vm("db"), vmRecord("db"));
      const r4 = await del(store, keys.vm("web"));
      await put(store, keys.task(crypto.randomUUID()), taskRecord());

      // A browser's EventSource keeps the URL of its first connection (an older since=) and
      // sends Last-Event-ID; the CLI passes since=. Both resume after r1.
      const viaHeader = await openOk(`${api.url}/v1/events?kind=vm&since=1`, admin, {
        "last-event-id": r1,
      });
      const viaQuery = await openOk(`${api.url}/v1/events?kind=vm&since=${r1}`, admin);
      for (const [how, sse] of [["Last-Event-ID", viaHeader], ["since=", viaQuery]] as const) {
        const frames = [await sse.next(), await sse.next(), await sse.next()];
        assertEquals(frames.map((f) => [f.event, f.id, f.data.name]), [
          ["modified", r2, "web"],
          ["added", r3, "db"], // created after r1 (its create revision is r3)
          ["deleted", r4, "web"], // named from its key: this connection never sent it
        ], how);
      }
      const r5 = await put(store, keys.vm("db"), vmRecord("db", { status: "running" }));
      for (const sse of [viaHeader, viaQuery]) {
        const live = await sse.next();
        assertEquals([live.event, live.id], ["modified", r5]);
        assertEquals(sse.frames.length, 4, "no snapshot, no sync, nothing repeated");
        await sse.close();
      }
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: name= follows one object; the name rule", async () => {
  assert(matchesName("web", "web"));
  assert(!matchesName("web", "web-2"));
  assert(matchesName("fast", "fast/node-a"), "a pool name matches each of its instances");
  assert(matchesName("fast/node-a", "fast/node-a"));
  assert(!matchesName("fast/node-a", "fast/node-b"));
  assert(matchesName(undefined, "anything"));

  await withCp(async ({ cp, store, token }) => {
    const api = serveEvents(cp.ctx, [vmSource, taskSource], {});
    const admin = (await token()).token;
    try {
      const task = taskRecord();
      await put(store, keys.vm("web"), vmRecord("web"));
      await put(store, keys.vm("web-2"), vmRecord("web-2"));
      await put(store, keys.task(task.id), task);

      const vm = await openOk(`${api.url}/v1/events?kind=vm&name=web`, admin);
      const { added } = await vm.untilSync();
      assertEquals(added.map((f) => f.data.name), ["web"]);

      const byId = await openOk(`${api.url}/v1/events?kind=task&name=${task.id}`, admin);
      assertEquals((await byId.untilSync()).added.map((f) => f.data.name), [task.id]);

      await put(store, keys.vm("web-2"), vmRecord("web-2", { status: "running" }));
      await put(store, keys.task(task.id), { ...task, status: "running" });
      const r = await put(store, keys.vm("web"), vmRecord("web", { status: "running" }));
      const f = await vm.next();
      assertEquals([f.event, f.id, f.data.name], ["modified", r, "web"]);
      const tf = await byId.next();
      assertEquals([tf.event, tf.data.object.status], ["modified", "running"]);

      const none = await openOk(`${api.url}/v1/events?kind=vm&name=ghost`, admin);
      assertEquals((await none.untilSync()).added, []);
      for (const s of [vm, byId, none]) await s.close();
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: kinds need their permission; view() hides objects per caller", async (t) => {
  await withCp(async ({ cp, store, token }) => {
    const visibleTo = new Set<string>();
    const api = serveEvents(cp.ctx, [vmSource, taskSource, poolSource(visibleTo)], {});
    const admin = await token("admin");
    const viewer = await token("viewer");
    try {
      const pool = { name: "fast", node: "node-a", path: "/p" };
      await put(store, keys.pool("fast", "node-a"), pool);
      await put(store, keys.vm("web"), vmRecord("web"));

      await t.step("asking for a kind without its permission is 403, nothing streams", async () => {
        const res = await Sse.open(`${api.url}/v1/events?kind=vm,pool`, viewer.token);
        assert(!(res instanceof Sse));
        assertEquals(res.status, 403);
        assertEquals(res.body.error.code, "permission_denied");
        assertEquals(res.body.error.details, {
          permission: "storage_pool:manage",
          role: "viewer",
          kind: "pool",
        });
      });

      await t.step("without kind=, each caller gets the kinds it may read", async () => {
        const v = await openOk(`${api.url}/v1/events`, viewer.token);
        assertEquals((await v.untilSync()).added.map((f) => f.data.kind), ["vm"]);
        await v.close();
        visibleTo.add(admin.id);
        const a = await openOk(`${api.url}/v1/events`, admin.token);
        assertEquals((await a.untilSync()).added.map((f) => `${f.data.kind}:${f.data.name}`), [
          "vm:web",
          "pool:fast/node-a",
        ]);
        await a.close();
      });

      await t.step("an object the caller can no longer see is deleted for it", async () => {
        const a = await openOk(`${api.url}/v1/events?kind=pool`, admin.token);
        await a.untilSync();
        visibleTo.delete(admin.id);
        const r1 = await put(store, keys.pool("fast", "node-a"), { ...pool, path: "/q" });
        const gone = await a.next();
        assertEquals([gone.event, gone.id, gone.data.name, gone.data.object], [
          "deleted",
          r1,
          "fast/node-a",
          null,
        ]);
        await put(store, keys.pool("fast", "node-a"), { ...pool, path: "/r" }); // still hidden
        visibleTo.add(admin.id);
        const r3 = await put(store, keys.pool("fast", "node-a"), { ...pool, path: "/s" });
        const back = await a.next();
        assertEquals([back.event, back.id, back.data.object.path], ["added", r3, "/s"]);
        await a.close();
      });
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: bad requests get the error envelope before any stream", async () => {
  await withCp(async ({ cp, store, token }) => {
    const api = serveEvents(cp.ctx, [vmSource, taskSource], {});
    const admin = (await token()).token;
    try {
      const cases: [string, Record<string, string>, number, string][] = [
        ["?kind=vm,bogus", {}, 400, "validation_failed"],
        ["?kind=node", {}, 400, "validation_failed"], // a kind this server does not stream
        ["?since=abc", {}, 400, "validation_failed"],
        ["?since=999999999", {}, 400, "validation_failed"], // newer than the store
        ["", { "last-event-id": "x1" }, 400, "validation_failed"],
        ["?name=", {}, 400, "validation_failed"],
      ];
      for (const [query, headers, status, code] of cases) {
        const res = await Sse.open(`${api.url}/v1/events${query}`, admin, headers);
        assert(!(res instanceof Sse), query);
        assertEquals([res.status, res.body.error.code], [status, code], query);
      }
      const bad = await Sse.open(`${api.url}/v1/events?kind=vm,bogus`, admin);
      assert(!(bad instanceof Sse));
      assertEquals(bad.body.error.details.fields[0].path, "kind");
      assertMatch(bad.body.error.message, /^invalid query: kind: unknown kind "bogus"/);

      const anon = await fetch(`${api.url}/v1/events`);
      assertEquals([anon.status, (await anon.json()).error.code], [401, "unauthenticated"]);
      assert(await store.currentRevision());
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: since older than the retained history ends with revision_compacted", async () => {
  await withCp(async ({ cp, store, token }) => {
    const api = serveEvents(cp.ctx, [vmSource], {});
    const admin = (await token()).token;
    try {
      const old = await put(store, keys.vm("web"), vmRecord("web"));
      await put(store, keys.vm("web"), vmRecord("web", { status: "running" }));
      const latest = await put(store, keys.vm("web"), vmRecord("web", { status: "paused" }));
      await store.compact(latest);
      const sse = await openOk(`${api.url}/v1/events?kind=vm&since=${old}`, admin);
      const f = await sse.next();
      assertEquals(f.event, "error");
      assertEquals(f.data.code, "revision_compacted");
      assertEquals(f.data.details.requested_revision, old);
      await sse.end();
      assertEquals(sse.frames.length, 1, "nothing after the error");
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: a disconnecting client's watch is cancelled; idle streams ping", async () => {
  await withCp(async ({ cp, store, token }) => {
    const counted = countingStore(store);
    const api = serveEvents({ ...cp.ctx, store: counted.store }, [vmSource, taskSource], {
      pingIntervalMs: 50,
    });
    const admin = (await token()).token;
    try {
      const a = await openOk(`${api.url}/v1/events`, admin);
      const b = await openOk(`${api.url}/v1/events?kind=task`, admin);
      await a.untilSync();
      await b.untilSync();
      await until("both watches", () => counted.active() === 2);
      await a.until("pings", () => a.comments >= 2);
      await a.close();
      await until("a's watch is cancelled", () => counted.active() === 1);
      await b.close();
      await until("b's watch is cancelled", () => counted.active() === 0);
    } finally {
      await api.close();
    }
  });
});

Deno.test("events: a slow reader pauses the watch (bounded memory) and misses nothing", async (t) => {
  await withCp(async ({ cp, store, token }) => {
    const counted = countingStore(store);
    const api = serveEvents({ ...cp.ctx, store: counted.store }, [taskSource], {
      maxQueuedEvents: 20,
    });
    const admin = (await token()).token;
    try {
      const task = taskRecord();
      const from = await put(store, keys.task(task.id), task);

      await t.step("a client that stops reading holds at most the queue", async () => {
        const slow = await Sse.open(`${api.url}/v1/events?since=${from}`, admin, {}, {
          paused: true,
        });
        assert(slow instanceof Sse);
        await until("the watch", () => counted.active() === 1);
        // ~15 MiB of changes: more than the socket buffers hold while the client reads nothing.
        const big = "x".repeat(50_000);
        const revisions: string[] = [];
        for (let i = 0; i < 300; i++) {
          const value = { ...task, progress: `${i} ${big}` };
          revisions.push(await put(store, keys.task(task.id), value));
        }
        await until("the watch is paused", () => counted.active() === 0);
        slow.start();
        await slow.until("every change", () => slow.frames.length === revisions.length, 20_000);
        assertEquals(slow.frames.map((f) => f.id), revisions, "in order, once each");
        assertEquals(
          slow.frames.map((f) => Number.parseInt(f.data.object.progress)),
          revisions.map((_, i) => i),
        );
        await until("the watch is back", () => counted.active() === 1);
        await slow.close();
      });

      await t.step("one revision bigger than the queue ends the stream", async () => {
        const now = await store.currentRevision();
        const sse = await openOk(`${api.url}/v1/events?kind=task&since=${now}`, admin);
        await until("the watch", () => counted.active() === 1);
        const tasks = Array.from({ length: 25 }, () => taskRecord());
        const { revision } = await store.txn({
          compare: [],
          success: tasks.map((t) => ({ type: "put" as const, key: keys.task(t.id), value: t })),
        });
        await sse.end();
        const last = sse.frames.at(-1)!;
        assertEquals(last.event, "error");
        assertEquals(last.data.code, "internal_error");
        assertEquals(last.data.details, { revision });
        assert(sse.frames.every((f) => f.data.revision !== revision), "none of it was sent");
      });
    } finally {
      await api.close();
    }
  });
});

Deno.test("validate(): Hono validator middleware failing with our validation_failed envelope", async (t) => {
  const app = new Hono();
  app.onError(errorHandler(new LogCapture().logger()));
  const Body = z.object({ timeout_seconds: z.number().int().min(1).default(60) }).strict();
  app.post("/act", validate("json", Body), (c) => c.json(c.req.valid("json")));
  app.get(
    "/list",
    validate("query", z.object({ limit: z.coerce.number().max(10) })),
    (c) => c.json(c.req.valid("query")),
  );
  const call = async (init: RequestInit & { path?: string }) => {
    const res = await app.request(init.path ?? "/act", { method: "POST", ...init });
    return { status: res.status, body: await res.json() };
  };
  const json = { "content-type": "application/json" };

  await t.step("a JSON body is parsed with the schema (defaults applied)", async () => {
    assertEquals(await call({ headers: json, body: '{"timeout_seconds": 5}' }), {
      status: 200,
      body: { timeout_seconds: 5 },
    });
  });
  await t.step("no body validates {} (optional bodies)", async () => {
    assertEquals(await call({}), { status: 200, body: { timeout_seconds: 60 } });
    assertEquals(await call({ headers: json }), { status: 200, body: { timeout_seconds: 60 } });
  });
  await t.step("schema failures list each field", async () => {
    const r = await call({ headers: json, body: '{"timeout_seconds": 0, "x": 1}' });
    assertEquals(r.status, 400);
    assertEquals(r.body.error.code, "validation_failed");
    assertMatch(r.body.error.message, /^invalid request body: /);
    assertEquals(
      r.body.error.details.fields.map((f: { path: string }) => f.path).sort(),
      ["", "timeout_seconds"],
    );
  });
  await t.step("malformed JSON, or a body that is not sent as JSON, is refused", async () => {
    const bad = await call({ headers: json, body: "{nope" });
    assertEquals([bad.status, bad.body.error.code], [400, "validation_failed"]);
    const text = await call({ headers: { "content-type": "text/plain" }, body: '{"a":1}' });
    assertEquals([text.status, text.body.error.code], [400, "validation_failed"]);
    assertMatch(text.body.error.message, /Content-Type: application\/json/);
  });
  await t.step("query strings too", async () => {
    const ok = await app.request("/list?limit=3");
    assertEquals(await ok.json(), { limit: 3 });
    const r = await app.request("/list?limit=30");
    const body = await r.json();
    assertEquals([r.status, body.error.code], [400, "validation_failed"]);
    assertEquals(body.error.details.fields[0].path, "limit");
    assertMatch(body.error.message, /^invalid query: limit: /);
  });
});
