/**
 * Test helpers for the CLI: schema-valid canned wire objects, a fake `otherix-api` on
 * 127.0.0.1:0, an in-memory {@link Io}, and a runner for the real CLI subprocess.
 *
 * @module
 */
import { type Node, NodeSchema } from "../../shared/api/nodes.ts";
import { type Task, TaskSchema } from "../../shared/api/tasks.ts";
import { type Vm, VmSchema } from "../../shared/api/vms.ts";
import { denoRunArgs, STANDARD_SANDBOX } from "../../scripts/permissions.ts";
import type { Io } from "../../cli/io.ts";
import type { Prompter } from "../../cli/prompt.ts";

/** A fixed "now" for rendering ages deterministically. */
export const NOW = Date.parse("2026-05-12T20:00:00.000Z");

/** Deterministic UUID-shaped id from a small number. */
export function uuid(n: number): string {
  return `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
}

/** A schema-valid VM. */
export function vmFixture(over: Partial<Vm> = {}): Vm {
  return VmSchema.parse({
    id: uuid(1),
    name: "demo-vm",
    owner_id: uuid(99),
    image_url: "http://127.0.0.1:9000/images/otherix-test.img",
    image_sha256: null,
    image: "otherix-test.img",
    image_format: "raw",
    architecture: "amd64",
    vcpus: 2,
    memory_mb: 2048,
    disk_gib: 10,
    pool: "default",
    node: "node-a",
    status: "running",
    desired_phase: "running",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: { id: uuid(50), type: "vm.create", status: "succeeded", error: null },
    error: null,
    created_at: "2026-05-12T19:55:00.000Z",
    updated_at: "2026-05-12T19:56:00.000Z",
    ...over,
  });
}

/** A schema-valid task. */
export function taskFixture(over: Partial<Task> = {}): Task {
  return TaskSchema.parse({
    id: uuid(50),
    type: "vm.create",
    status: "pending",
    resource: { kind: "vm", name: "demo-vm", id: uuid(1) },
    reason: null,
    attempts: 0,
    progress: null,
    error: null,
    created_at: "2026-05-12T19:55:00.000Z",
    updated_at: "2026-05-12T19:55:00.000Z",
    started_at: null,
    finished_at: null,
    ...over,
  });
}

/** A schema-valid node. */
export function nodeFixture(over: Partial<Node> = {}): Node {
  return NodeSchema.parse({
    id: uuid(7),
    name: "node-a",
    status: "ready",
    architecture: "amd64",
    cordoned: false,
    endpoint: "https://10.0.0.5:9443",
    accelerator: "tcg",
    agent_version: "0.1.0",
    resources: {
      cpu_cores_total: 2,
      load_average_1m: 0.5,
      memory_total_mib: 4096,
      memory_available_mib: 2048,
      system_disk_total_bytes: 20 * 1024 ** 3,
      system_disk_available_bytes: 10 * 1024 ** 3,
    },
    migration_host: "10.0.0.5",
    migration_port_range: "49152-49251",
    vm_count: 1,
    allocated_vcpus: 2,
    allocated_memory_mib: 1024,
    pressure: {
      memory: { under_pressure: false, consecutive: 0, since: null, available_percent: 50 },
      system_disk: { under_pressure: false, consecutive: 0, since: null, available_percent: 50 },
    },
    last_heartbeat_at: "2026-05-12T19:59:52.000Z",
    created_at: "2026-05-05T20:00:00.000Z",
    updated_at: "2026-05-12T19:59:52.000Z",
    ...over,
  });
}

/** A JSON response. */
export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** An error envelope response. */
export function envelope(status: number, code: string, message: string): Response {
  return json({ error: { code, message } }, status);
}

/** A request the fake API received. */
export interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  auth: string | null;
  body: unknown;
}

/** Routes of the fake API: `"GET /v1/vms"` → handler. */
export type Routes = Record<string, (req: Request, seen: Seen) => Response | Promise<Response>>;

/** A running fake API. */
export interface FakeApi {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  url: string;
  /** Requests received, in order. */
  seen: Seen[];
  /** Stops the server. */
  close(): Promise<void>;
}

/**
 * Starts a fake `otherix-api` on 127.0.0.1:0 serving `routes`; a route key is
 * `"<METHOD> <path>"`, with `*` matching one path segment. Unknown routes get a 404 envelope.
 */
export function startFakeApi(routes: Routes): FakeApi {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const text = await req.text();
    let body: unknown = undefined;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = text;
    }
    const s: Seen = {
      method: req.method,
      path: url.pathname,
      query: url.searchParams,
      auth: req.headers.get("authorization"),
      body,
    };
    seen.push(s);
    for (const [key, handler] of Object.entries(routes)) {
      const [method, pattern] = key.split(" ");
      const re = new RegExp("^" + pattern.replaceAll("*", "[^/]+") + "$");
      if (method === req.method && re.test(url.pathname)) return await handler(req, s);
    }
    return envelope(404, "not_found", `no route for ${req.method} ${url.pathname}`);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    seen,
    close: () => server.shutdown(),
  };
}

/** A port on 127.0.0.1 with nothing listening (bound, then released). */
export function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Output of a CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The Deno cache dir of this process, so subprocesses with another HOME reuse it. */
function denoDir(): string {
  const explicit = Deno.env.get("DENO_DIR");
  if (explicit) return explicit;
  const cache = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME")}/.cache`;
  return `${cache}/deno`;
}

/**
 * Runs the real CLI (`deno run <otherix sandbox flags> cli/main.ts …args`) with a clean
 * environment: only `env` plus `HOME` (default `home`) and the Deno cache location.
 */
export async function runCli(
  args: string[],
  opts: { home: string; env?: Record<string, string>; stdin?: string; denoFlags?: string[] },
): Promise<CliResult> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix", STANDARD_SANDBOX, args, opts.denoFlags),
    clearEnv: true,
    env: {
      HOME: opts.home,
      DENO_DIR: denoDir(),
      DENO_NO_UPDATE_CHECK: "1",
      NO_COLOR: "1",
      ...opts.env,
    },
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  });
  const child = cmd.spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A CLI process still running: its output so far, a condition wait, its result. */
export interface RunningCli {
  child: Deno.ChildProcess;
  /** Output so far. */
  readonly stdout: string;
  readonly stderr: string;
  /** Waits until `pred(stdout, stderr)` holds (re-checked on every output chunk). */
  until(
    what: string,
    pred: (stdout: string, stderr: string) => boolean,
    ms?: number,
  ): Promise<void>;
  /** Waits for the exit. */
  result(): Promise<CliResult>;
}

/** Starts the real CLI like {@link runCli} without waiting for it (stdin closed). */
export function spawnCli(args: string[], opts: { home: string; env?: Record<string, string> }) {
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix", STANDARD_SANDBOX, args),
    clearEnv: true,
    env: {
      HOME: opts.home,
      DENO_DIR: denoDir(),
      DENO_NO_UPDATE_CHECK: "1",
      NO_COLOR: "1",
      ...opts.env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = { stdout: "", stderr: "" };
  const listeners = new Set<() => void>();
  const drain = async (stream: ReadableStream<Uint8Array>, field: "stdout" | "stderr") => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      out[field] += chunk;
      for (const l of [...listeners]) l();
    }
  };
  const drained = Promise.all([drain(child.stdout, "stdout"), drain(child.stderr, "stderr")]);
  let exited = false;
  const status = child.status.then(async (s) => {
    await drained;
    exited = true;
    for (const l of [...listeners]) l();
    return s;
  });
  const running: RunningCli = {
    child,
    get stdout() {
      return out.stdout;
    },
    get stderr() {
      return out.stderr;
    },
    async until(what, pred, ms = 15_000) {
      const deadline = Date.now() + ms;
      while (!pred(out.stdout, out.stderr)) {
        if (exited || Date.now() > deadline) {
          throw new Error(
            `${exited ? "CLI exited" : "timed out"} waiting for ${what}` +
              `\nstdout: ${out.stdout}\nstderr: ${out.stderr}`,
          );
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, deadline - Date.now());
          function done() {
            clearTimeout(timer);
            listeners.delete(done);
            resolve();
          }
          listeners.add(done);
        });
      }
    },
    async result() {
      const s = await status;
      return { code: s.code, stdout: out.stdout, stderr: out.stderr };
    },
  };
  return running;
}

/** An in-memory {@link Io}: captured output, scripted prompt answers, a manual clock. */
export interface FakeIo extends Io {
  /** Everything written to stdout. */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
  /** Prompts shown (line and secret). */
  prompts: string[];
  /** Sends SIGINT: runs the handlers registered with `onInterrupt`. */
  interrupt(): void;
}

/** Options of {@link fakeIo}. */
export interface FakeIoOptions {
  env?: Record<string, string>;
  /** Pretend stdin/stderr are terminals. */
  tty?: boolean;
  /** Answers returned to prompts, in order (`null` = EOF). */
  answers?: (string | null)[];
  /** Serves API calls in-process instead of the network. */
  fetch?: typeof fetch;
  /** Files for `--user-data @file`. */
  files?: Record<string, string>;
}

/** Creates a {@link FakeIo}; `sleep` advances the fake clock instead of waiting. */
export function fakeIo(opts: FakeIoOptions = {}): FakeIo {
  let clock = NOW;
  const answers = [...(opts.answers ?? [])];
  const interruptHandlers = new Set<() => void>();
  const io: FakeIo = {
    stdout: "",
    stderr: "",
    prompts: [],
    interrupt: () => [...interruptHandlers].forEach((h) => h()),
    onInterrupt: (handler) => {
      interruptHandlers.add(handler);
      return () => interruptHandlers.delete(handler);
    },
    env: (n) => opts.env?.[n] || undefined,
    out(t) {
      io.stdout += t;
    },
    err(t) {
      io.stderr += t;
    },
    stdinIsTerminal: () => opts.tty ?? false,
    stderrIsTerminal: () => opts.tty ?? false,
    prompter: undefined as unknown as Prompter,
    hostname: () => "testhost",
    now: () => clock,
    sleep: (ms) => {
      clock += ms;
      return Promise.resolve();
    },
    fetch: opts.fetch ?? ((input, init) => fetch(input, init)),
    readTextFile: (path) => {
      const f = opts.files?.[path];
      return f === undefined
        ? Promise.reject(new Deno.errors.NotFound(`No such file: ${path}`))
        : Promise.resolve(f);
    },
  };
  io.prompter = {
    line(q) {
      io.prompts.push(q);
      return Promise.resolve(answers.length ? answers.shift()! : null);
    },
    secret(q) {
      io.prompts.push(q);
      return Promise.resolve(answers.length ? answers.shift()! : null);
    },
  };
  return io;
}

/**
 * A `fetch` that dispatches to `routes` in-process (same matching as {@link startFakeApi});
 * `seen` collects the requests.
 */
export function routesFetch(routes: Routes, seen: Seen[] = []): typeof fetch {
  return async (input, init) => {
    const req = new Request(input, init);
    const url = new URL(req.url);
    const text = await req.text();
    const s: Seen = {
      method: req.method,
      path: url.pathname,
      query: url.searchParams,
      auth: req.headers.get("authorization"),
      body: text ? JSON.parse(text) : undefined,
    };
    seen.push(s);
    for (const [key, handler] of Object.entries(routes)) {
      const [method, pattern] = key.split(" ");
      const re = new RegExp("^" + pattern.replaceAll("*", "[^/]+") + "$");
      if (method === req.method && re.test(url.pathname)) return await handler(req, s);
    }
    return envelope(404, "not_found", `no route for ${req.method} ${url.pathname}`);
  };
}
