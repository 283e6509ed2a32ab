/**
 * An in-memory control plane for the manifest engine's in-process tests: VMs, pool instances,
 * networks, nodes and the default pool behind the routes the engine calls, answering with
 * schema-valid views and the real error codes. Failures are scripted per resource name.
 *
 * @module
 */
import {
  type Pool,
  type PoolInstanceView,
  PoolInstanceViewSchema,
} from "../../shared/api/pools.ts";
import type { PlacementDecision } from "../../shared/api/placement.ts";
import type { Task } from "../../shared/api/tasks.ts";
import type { Vm } from "../../shared/api/vms.ts";
import type { Network } from "../../shared/api/networks.ts";
import {
  envelope,
  json,
  NOW,
  routesFetch,
  type Seen,
  taskFixture,
  uuid,
  vmFixture,
} from "./fixtures.ts";

/** A network as the fake serves it (shared/api/networks.ts `Network`). */
export type FakeNetwork = Network;

/** What the fake holds, and how it fails. */
export class FakeCluster {
  vms = new Map<string, Vm>();
  pools: PoolInstanceView[] = [];
  networks: Map<string, FakeNetwork> | null = new Map();
  nodes = new Set(["node-a", "node-b"]);
  defaultPool: string | null = "default";
  tasks = new Map<string, Task>();
  seen: Seen[] = [];
  /** VM create tasks that fail, by VM name: the error. */
  failCreateTask = new Map<string, { code: string; message: string }>();
  /** Pool instances the agent reports failed, by `name/node`: the message. */
  failPool = new Map<string, string>();
  /** POSTs refused at once, by resource name: [status, code, message]. */
  refuse = new Map<string, [number, string, string]>();
  /** Nodes the dry run finds no room on (every VM). */
  noRoom = false;
  #ids = 100;

  /** A pool instance view. */
  instance(name: string, node: string, path: string, status = "ready"): PoolInstanceView {
    return PoolInstanceViewSchema.parse({
      id: uuid(this.#ids++),
      name,
      node,
      type: "local_dir",
      path,
      status,
      message: null,
      total_bytes: null,
      available_bytes: null,
      images: [],
      images_total: 0,
      is_default: name === this.defaultPool,
      effective_available_bytes: null,
      pending_vm_disk_bytes: 0,
      pressure: null,
      last_scan: null,
      last_scan_error: null,
      created_at: new Date(NOW).toISOString(),
      updated_at: new Date(NOW).toISOString(),
    });
  }

  #task(type: Task["type"], name: string, status: Task["status"], error: Task["error"] = null) {
    const t = taskFixture({
      id: uuid(this.#ids++),
      type,
      status: "pending",
      resource: { kind: "vm", name, id: uuid(1) },
    });
    this.tasks.set(t.id, { ...t, status, error });
    return t;
  }

  /** The `fetch` serving the routes. */
  fetch(): typeof fetch {
    const nf = (code: string, what: string) => envelope(404, code, `${what} not found`);
    const poolOf = (name: string): Pool | null => {
      const instances = this.pools.filter((p) => p.name === name);
      return instances.length
        ? { name, type: "local_dir", is_cluster_default: name === this.defaultPool, instances }
        : null;
    };
    return routesFetch({
      "GET /v1/vms/*": (req) => {
        const name = new URL(req.url).pathname.split("/").pop()!;
        const vm = this.vms.get(name);
        return vm ? json(vm) : nf("vm_not_found", `vm "${name}"`);
      },
      "POST /v1/vms": (req, s) => {
        const body = s.body as Record<string, unknown>;
        const name = String(body.name);
        const refused = this.refuse.get(name);
        if (refused) return envelope(...refused);
        const pool = String(body.pool ?? this.defaultPool);
        if (new URL(req.url).searchParams.get("dry_run") === "true") {
          const d: PlacementDecision = {
            algorithm: "resource_aware",
            pool,
            node: this.noRoom ? null : "node-a",
            candidates: [],
          };
          return json(d);
        }
        if (this.vms.has(name)) return envelope(409, "vm_already_exists", "exists");
        const fail = this.failCreateTask.get(name);
        const nics = body.networks
          ? (body.networks as string[]).map((n, i) => ({
            index: i,
            network: n,
            mac: `52:54:00:00:00:0${i}`,
            addresses: [{ address: `10.0.0.${10 + i}`, prefix_length: 24, source: "ipam" }],
          }))
          : undefined;
        this.vms.set(name, {
          ...vmFixture({
            name,
            image_url: String(body.image_url),
            architecture: body.architecture as "amd64",
            vcpus: Number(body.vcpus ?? 1),
            memory_mb: Number(body.memory_mb ?? 512),
            disk_gib: Number(body.disk_gib ?? 10),
            pool,
            node: String(body.node ?? "node-a"),
            status: fail ? "failed" : "running",
          }),
          ...(nics ? { nics } : {}),
        } as Vm);
        const t = this.#task("vm.create", name, fail ? "failed" : "succeeded", fail ?? null);
        return json(t, 202);
      },
      "DELETE /v1/vms/*": (req) => {
        const name = new URL(req.url).pathname.split("/").pop()!;
        if (!this.vms.delete(name)) return nf("vm_not_found", `vm "${name}"`);
        return json(this.#task("vm.delete", name, "succeeded"), 202);
      },
      "GET /v1/tasks/*": (req) => {
        const t = this.tasks.get(new URL(req.url).pathname.split("/").pop()!);
        return t ? json(t) : nf("task_not_found", "task");
      },
      "GET /v1/pools/*": (req) => {
        const ref = new URL(req.url).pathname.split("/").pop()!;
        const byId = this.pools.find((p) => p.id === ref);
        if (byId) {
          // The agent reports the directory on the first look after the create.
          if (byId.status === "pending") {
            const why = this.failPool.get(`${byId.name}/${byId.node}`);
            Object.assign(byId, why ? { status: "failed", message: why } : { status: "ready" });
          }
          return json(byId);
        }
        const pool = poolOf(ref);
        return pool ? json(pool) : nf("pool_not_found", `pool "${ref}"`);
      },
      "POST /v1/pools": (_req, s) => {
        const b = s.body as { name: string; node: string; path: string };
        const refused = this.refuse.get(`${b.name}/${b.node}`) ?? this.refuse.get(b.name);
        if (refused) return envelope(...refused);
        if (!this.nodes.has(b.node)) return nf("node_not_found", `node ${b.node}`);
        if (this.pools.some((p) => p.name === b.name && p.node === b.node)) {
          return envelope(409, "conflict", "instance exists");
        }
        const p = this.instance(b.name, b.node, b.path, "pending");
        this.pools.push(p);
        return json(p, 201);
      },
      "DELETE /v1/pools/*": (req) => {
        const url = new URL(req.url);
        const name = url.pathname.split("/").pop()!;
        const node = url.searchParams.get("node");
        const i = this.pools.findIndex((p) => p.name === name && (!node || p.node === node));
        if (i < 0) return nf("pool_not_found", `pool "${name}"`);
        if ([...this.vms.values()].some((v) => v.pool === name && v.node === this.pools[i].node)) {
          return envelope(409, "conflict", `pool ${name} still backs VM disks`);
        }
        return json(this.pools.splice(i, 1)[0]);
      },
      "GET /v1/networks/*": (req) => {
        if (!this.networks) return envelope(404, "not_found", `no route for GET ${req.url}`);
        const name = new URL(req.url).pathname.split("/").pop()!;
        const n = this.networks.get(name);
        return n ? json(n) : nf("network_not_found", `network "${name}"`);
      },
      "POST /v1/networks": (req, s) => {
        if (!this.networks) return envelope(404, "not_found", `no route for POST ${req.url}`);
        const b = s.body as Record<string, unknown> & { name: string; type: "bridge" };
        const refused = this.refuse.get(b.name);
        if (refused) return envelope(...refused);
        const overlay = b.type === ("overlay" as string);
        const n: Network = {
          id: uuid(this.#ids++),
          name: b.name,
          type: b.type,
          managed: overlay || Boolean(b.managed),
          bridge_name: overlay ? "oxb4242" : String(b.bridge_name),
          mtu: overlay ? 1450 : (b.mtu as number | undefined) ?? (b.managed ? 1500 : null),
          subnet: (b.subnet as string | undefined) ??
            (b.managed || overlay ? "10.245.0.0/24" : null),
          gateway: b.managed ? (b.gateway as string | undefined) ?? "10.245.0.1" : null,
          vni: overlay ? 4242 : null,
          attached_vms: 0,
          addresses: null,
          created_at: new Date(NOW).toISOString(),
          updated_at: new Date(NOW).toISOString(),
        };
        this.networks.set(b.name, n);
        return json(n, 201);
      },
      "DELETE /v1/networks/*": (req) => {
        const name = new URL(req.url).pathname.split("/").pop()!;
        const n = this.networks?.get(name);
        if (!n) return nf("network_not_found", `network "${name}"`);
        this.networks!.delete(name);
        return json(n);
      },
      "GET /v1/nodes/*": (req) => {
        const name = new URL(req.url).pathname.split("/").pop()!;
        return this.nodes.has(name) ? json({ name }) : nf("node_not_found", `node ${name}`);
      },
      "GET /v1/cluster/default-pool": () =>
        json({ default_pool_name: this.defaultPool, updated_at: null }),
    }, this.seen);
  }

  /** The mutating requests seen, as `METHOD path` (reads left out). */
  writes(): string[] {
    return this.seen.filter((s) => s.method !== "GET" && !s.query.get("dry_run"))
      .map((s) =>
        `${s.method} ${s.path}${s.query.get("node") ? `?node=${s.query.get("node")}` : ""}`
      );
  }
}
