/**
 * Prometheus metrics of the control plane (npm `prom-client`), served at `GET /metrics` on the
 * public port in the text exposition format:
 *
 * | metric | type | labels |
 * | --- | --- | --- |
 * | `otherix_api_requests_total` | counter | `method`, `route` (the route pattern), `code` |
 * | `otherix_api_request_duration_seconds` | histogram | `method`, `route` |
 * | `otherix_tasks_total` | counter | `type`, `result` (`succeeded` / `failed`) |
 * | `otherix_task_duration_seconds` | histogram | `type`, `result` (created → finished) |
 * | `otherix_vm_create_phase_seconds` | histogram | `phase` (see {@link createPhases}) |
 * | `otherix_node_heartbeat_age_seconds` | gauge | `node` |
 * | `otherix_node_status` | gauge (1 for the node's status) | `node`, `status` |
 * | `otherix_pool_available_bytes` | gauge | `pool`, `node` |
 * | `otherix_vms` | gauge | `status` |
 *
 * Gauges are computed at scrape time from the informer caches (no store reads); counters and
 * histograms are updated where the events happen (the HTTP middleware, the task worker).
 * Per-VM CPU, memory and I/O live on each agent's own `/metrics` (agent/metrics.ts).
 *
 * @module
 */
import client from "prom-client";
import type { MiddlewareHandler } from "hono";
import type { CpContext } from "./context.ts";
import type { NodeRecord, PoolRecord, TaskRecord, VmRecord } from "./repo/records.ts";

/** Statuses a node can have (one series each, 1 for the current one). */
const NODE_STATUSES = ["pending", "ready", "unreachable", "gone"] as const;

/**
 * The phases of a `vm.create`, seconds each, from its task's `timings` (ms after the task was
 * created; cp/repo/records.ts TaskRecord): `queue` (created → claimed), `dispatch` (claimed →
 * dispatched), the agent's `image`, `overlay`, `seed`, `spawn`, `qmp_ready` steps (each since
 * the previous one), `record` (the agent's result → finished) and `total`. A phase whose marks
 * are missing is left out.
 */
export function createPhases(t: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  const span = (name: string, from: number | undefined, to: number | undefined) => {
    if (from !== undefined && to !== undefined && to >= from) out[name] = (to - from) / 1000;
  };
  span("queue", 0, t.claimed);
  span("dispatch", t.claimed, t.dispatched);
  let prev = 0;
  for (const step of ["image", "overlay", "seed", "spawn", "qmp_ready"]) {
    const at = t[`agent.${step}`];
    if (at === undefined) continue;
    span(step, prev, at);
    prev = at;
  }
  span("record", t.agent_done, t.finished);
  span("total", 0, t.finished);
  return out;
}

/** The control plane's metrics registry and the hooks that feed it. */
export class CpMetrics {
  readonly registry = new client.Registry();
  #requests = new client.Counter({
    name: "otherix_api_requests_total",
    help: "Public API requests by method, route pattern and status code.",
    labelNames: ["method", "route", "code"] as const,
    registers: [this.registry],
  });
  #latency = new client.Histogram({
    name: "otherix_api_request_duration_seconds",
    help: "Public API request latency, seconds.",
    labelNames: ["method", "route"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  #tasks = new client.Counter({
    name: "otherix_tasks_total",
    help: "Tasks finished, by type and result.",
    labelNames: ["type", "result"] as const,
    registers: [this.registry],
  });
  #taskDuration = new client.Histogram({
    name: "otherix_task_duration_seconds",
    help: "Task duration from creation to its end, seconds.",
    labelNames: ["type", "result"] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900],
    registers: [this.registry],
  });
  #phases = new client.Histogram({
    name: "otherix_vm_create_phase_seconds",
    help: "Phases of successful VM creates, seconds (cp/metrics.ts createPhases).",
    labelNames: ["phase"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  /** @param ctx read at scrape time (informer caches, liveness) */
  constructor(ctx: CpContext) {
    const registry = this.registry;
    new client.Gauge({
      name: "otherix_node_heartbeat_age_seconds",
      help: "Seconds since each node's last heartbeat.",
      labelNames: ["node"] as const,
      registers: [registry],
      collect() {
        this.reset();
        const now = ctx.now().getTime();
        for (const n of ctx.cache?.nodes.list() ?? [] as NodeRecord[]) {
          const stored = n.last_heartbeat_at ? Date.parse(n.last_heartbeat_at) : 0;
          const last = Math.max(stored, ctx.liveness?.get(n.name) ?? 0);
          if (last > 0) this.set({ node: n.name }, Math.max(0, (now - last) / 1000));
        }
      },
    });
    new client.Gauge({
      name: "otherix_node_status",
      help: "1 for each node's current status.",
      labelNames: ["node", "status"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const n of ctx.cache?.nodes.list() ?? [] as NodeRecord[]) {
          for (const s of NODE_STATUSES) this.set({ node: n.name, status: s }, +(n.status === s));
        }
      },
    });
    new client.Gauge({
      name: "otherix_pool_available_bytes",
      help: "Free bytes of each pool instance's filesystem, as last reported.",
      labelNames: ["pool", "node"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const p of ctx.cache?.pools.list() ?? [] as PoolRecord[]) {
          if (p.available_bytes !== null) {
            this.set({ pool: p.name, node: p.node }, p.available_bytes);
          }
        }
      },
    });
    new client.Gauge({
      name: "otherix_vms",
      help: "VMs by status.",
      labelNames: ["status"] as const,
      registers: [registry],
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const v of ctx.cache?.vms.list() ?? [] as VmRecord[]) {
          counts.set(v.status, (counts.get(v.status) ?? 0) + 1);
        }
        for (const [status, n] of counts) this.set({ status }, n);
      },
    });
  }

  /**
   * Hono middleware counting requests and their latency by route pattern (`/v1/vms/:name`,
   * never the raw path: label cardinality stays bounded). Unmatched paths count as `unmatched`.
   */
  http(): MiddlewareHandler {
    return async (c, next) => {
      const start = performance.now();
      try {
        await next();
      } finally {
        // The route the request was for: the last matched handler that is not a middleware
        // (an auth refusal in a sub-app's `use("*")` still counts under the route).
        const matched = c.req.matchedRoutes.filter((r) => r.method !== "ALL");
        const route = matched.at(-1)?.path ?? "unmatched";
        const method = c.req.method;
        this.#requests.inc({ method, route, code: String(c.res.status) });
        this.#latency.observe({ method, route }, (performance.now() - start) / 1000);
      }
    };
  }

  /** Records a task that just ended (the worker calls it after the terminal write). */
  taskFinished(t: TaskRecord): void {
    const result = t.status === "succeeded" ? "succeeded" : "failed";
    this.#tasks.inc({ type: t.type, result });
    if (t.finished_at) {
      const secs = (Date.parse(t.finished_at) - Date.parse(t.created_at)) / 1000;
      this.#taskDuration.observe({ type: t.type, result }, Math.max(0, secs));
    }
    if (t.type === "vm.create" && result === "succeeded" && t.timings) {
      for (const [phase, secs] of Object.entries(createPhases(t.timings))) {
        this.#phases.observe({ phase }, secs);
      }
    }
  }

  /** The exposition text (`GET /metrics`). */
  async text(): Promise<string> {
    return await this.registry.metrics();
  }

  /** The exposition format's content type. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
