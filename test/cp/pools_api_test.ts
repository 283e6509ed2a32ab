// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Pools and the cluster default pool on the public API (spec 003; spec 001 "Cluster
 * configuration"), in-process against a real store: create / list / get / delete with every
 * refusal and its stable code (nothing changed), RBAC per role, the agent told its desired
 * pools, the default pool's set / unset and `vm create` resolving it, and the provisioner's
 * "once per node" rule.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { provisionDefaultPool } from "../../cp/pools/controller.ts";
import { keys, type PoolRecord } from "../../cp/repo/records.ts";
import { rangeAll } from "../../cp/store/store.ts";
import { type PoolCtx, putNode, putVm, withPoolCtx } from "./pools_helpers.ts";

/** Every stored instance as `name/node=path`, sorted. */
async function stored(p: PoolCtx): Promise<string[]> {
  return (await rangeAll<PoolRecord>(p.ctx.store, keys.pools))
    .map((kv) => `${kv.value.name}/${kv.value.node}=${kv.value.path}`);
}

/** Creates instance `name` on `node` at `<dir>/pools/<sub>` and expects 201. */
async function create(p: PoolCtx, name: string, node: string, sub = name): Promise<any> {
  const r = await p.api("POST", "/v1/pools", { name, node, path: `${p.dir}/pools/${sub}` });
  assertEquals(r.status, 201, JSON.stringify(r.json));
  return r.json;
}

Deno.test("pools API: create registers one pending instance and tells the agent; every bad input is refused with its code", async (t) => {
  await withPoolCtx(async (p) => {
    const nodeA = await putNode(p, "node-a");
    await putNode(p, "node-b");

    await t.step("create: 201 pending, path normalized, agent gets its desired set", async () => {
      const r = await p.api("POST", "/v1/pools", {
        name: "fast",
        node: "node-a",
        path: `${p.dir}/pools/fast/`,
      });
      assertEquals(r.status, 201);
      assertEquals(
        [r.json.name, r.json.node, r.json.type, r.json.status, r.json.path],
        ["fast", "node-a", "local_dir", "pending", `${p.dir}/pools/fast`],
      );
      assertEquals(
        [r.json.available_bytes, r.json.effective_available_bytes, r.json.last_scan],
        [null, null, null],
      );
      assertEquals(p.agents.pushes.at(-1), {
        node: "node-a",
        pools: [{ name: "fast", path: `${p.dir}/pools/fast` }],
      });
      assert(p.logs.has("pool created", { pool: "fast", node: "node-a" }));
    });

    await t.step("bad input: stable codes, nothing stored", async () => {
      const before = await stored(p);
      const cases: [Record<string, unknown>, number, string, string?][] = [
        [{ name: "fast", node: "node-a", path: `${p.dir}/pools/fast2` }, 409, "conflict"],
        [{ name: "x", node: nodeA.id, path: `${p.dir}/pools/x` }, 400, "validation_failed"],
        [{ name: "x", node: "node-zz", path: `${p.dir}/pools/x` }, 404, "node_not_found"],
        [{ name: "Fast", node: "node-a", path: `${p.dir}/pools/x` }, 400, "validation_failed"],
        [{ name: "x", node: "node-a", path: "/etc/x" }, 400, "path_not_allowed"],
        [{ name: "x", node: "node-a", path: `${p.dir}/pools-evil/x` }, 400, "path_not_allowed"],
        [{ name: "x", node: "node-a", path: `${p.dir}/pools/../x` }, 400, "path_not_allowed"],
        [{ name: "x", node: "node-a", path: "pools/x" }, 400, "path_not_allowed"],
        [{ name: "x", node: "node-a", path: `${p.dir}/pools` }, 400, "path_not_allowed"],
        [
          { name: "x", node: "node-a", path: `${p.dir}/pools/${"a".repeat(1030)}` },
          400,
          "path_not_allowed",
        ],
        // Overlaps the fast pool of node-a: the same directory, or inside it.
        [{ name: "x", node: "node-a", path: `${p.dir}/pools/fast` }, 409, "conflict"],
        [{ name: "x", node: "node-a", path: `${p.dir}/pools/fast/sub` }, 409, "conflict"],
        [
          { name: "x", node: "node-a", path: `${p.dir}/pools/x`, type: "nfs" },
          400,
          "validation_failed",
        ],
        [
          { name: "x", node: "node-a", path: `${p.dir}/pools/x`, extra: 1 },
          400,
          "validation_failed",
        ],
      ];
      for (const [body, status, code] of cases) {
        const r = await p.api("POST", "/v1/pools", body);
        assertEquals([r.status, r.json.error?.code], [status, code], JSON.stringify(body));
      }
      const conflict = await p.api("POST", "/v1/pools", {
        name: "fast",
        node: "node-a",
        path: `${p.dir}/pools/other`,
      });
      assertStringIncludes(
        conflict.json.error.message,
        'pool "fast" already exists on node "node-a"',
      );
      const gate = await p.api("POST", "/v1/pools", { name: "x", node: "node-a", path: "/etc/x" });
      assertEquals(gate.json.error.details.allowed_path_prefixes, [`${p.dir}/pools/`]);
      assertEquals(await stored(p), before);
    });

    await t.step("the same name on another node, and the same path there, is fine", async () => {
      await create(p, "fast", "node-b");
      assertEquals(await stored(p), [
        `fast/node-a=${p.dir}/pools/fast`,
        `fast/node-b=${p.dir}/pools/fast`,
      ]);
    });
  });
});

Deno.test("pools API: admin-only writes, every role reads", async () => {
  await withPoolCtx(async (p) => {
    await putNode(p, "node-a");
    const fast = await create(p, "fast", "node-a");
    for (const role of ["operator", "developer", "viewer"] as const) {
      for (
        const [method, path, body] of [
          ["POST", "/v1/pools", { name: "y", node: "node-a", path: `${p.dir}/pools/y` }],
          ["DELETE", `/v1/pools/${fast.id}`, undefined],
          ["POST", "/v1/pools/fast/scan", undefined],
          ["PUT", "/v1/cluster/default-pool", { name: "fast" }],
          ["DELETE", "/v1/cluster/default-pool", undefined],
        ] as const
      ) {
        const r = await p.api(method, path, body, role);
        assertEquals([r.status, r.json.error.code], [403, "permission_denied"], `${role} ${path}`);
      }
      for (const path of ["/v1/pools", "/v1/pools/fast", `/v1/pools/${fast.id}`]) {
        assertEquals((await p.api("GET", path, undefined, role)).status, 200, `${role} ${path}`);
      }
      const def = await p.api("GET", "/v1/cluster/default-pool", undefined, role);
      assertEquals([def.status, def.json.default_pool_name], [200, "default"], role);
    }
    assertEquals(await stored(p), [`fast/node-a=${p.dir}/pools/fast`]);
  });
});

Deno.test("pools API: list filters and pages; get by name aggregates, get by UUID is one instance", async (t) => {
  await withPoolCtx(async (p) => {
    const a = await putNode(p, "node-a");
    await putNode(p, "node-b");
    await create(p, "default", "node-a");
    await create(p, "default", "node-b");
    const fast = await create(p, "fast", "node-a");

    await t.step("list: one row per instance, pool name then node order", async () => {
      const all = (await p.api("GET", "/v1/pools")).json;
      assertEquals(all.items.map((p: any) => `${p.name}/${p.node}`), [
        "default/node-a",
        "default/node-b",
        "fast/node-a",
      ]);
      assertEquals(all.items.map((p: any) => p.is_default), [true, true, false]);
      assertEquals(all.next_cursor, null);
    });

    await t.step("list --node by name or UUID, --type", async () => {
      const names = async (q: string) =>
        (await p.api("GET", `/v1/pools?${q}`)).json.items.map((p: any) => `${p.name}/${p.node}`);
      assertEquals(await names("node=node-a"), ["default/node-a", "fast/node-a"]);
      assertEquals(await names(`node=${a.id}`), ["default/node-a", "fast/node-a"]);
      assertEquals(await names(`node=${crypto.randomUUID()}`), []);
      assertEquals((await names("type=local_dir")).length, 3);
      const bad = await p.api("GET", "/v1/pools?type=nfs");
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
      const badNode = await p.api("GET", "/v1/pools?node=Node_A");
      assertEquals([badNode.status, badNode.json.error.code], [400, "validation_failed"]);
    });

    await t.step("list pages with limit and cursor", async () => {
      const p1 = (await p.api("GET", "/v1/pools?limit=2")).json;
      assertEquals(p1.items.length, 2);
      assert(p1.next_cursor);
      const p2 = (await p.api("GET", `/v1/pools?limit=2&cursor=${p1.next_cursor}`)).json;
      assertEquals(p2.items.map((p: any) => p.name), ["fast"]);
      assertEquals(p2.next_cursor, null);
    });

    await t.step("get by name: every instance and is_cluster_default", async () => {
      const g = (await p.api("GET", "/v1/pools/default")).json;
      assertEquals([g.name, g.type, g.is_cluster_default], ["default", "local_dir", true]);
      assertEquals(g.instances.map((i: any) => i.node), ["node-a", "node-b"]);
      assertEquals((await p.api("GET", "/v1/pools/fast")).json.is_cluster_default, false);
    });

    await t.step("get by UUID: the flat instance", async () => {
      const g = (await p.api("GET", `/v1/pools/${fast.id.toUpperCase()}`)).json;
      assertEquals([g.id, g.name, g.node, g.is_default], [fast.id, "fast", "node-a", false]);
    });

    await t.step("unknown names and ids are pool_not_found", async () => {
      for (const ref of ["nope", crypto.randomUUID()]) {
        const r = await p.api("GET", `/v1/pools/${ref}`);
        assertEquals([r.status, r.json.error.code], [404, "pool_not_found"], ref);
      }
      const bad = await p.api("GET", "/v1/pools/Bad_Name");
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
    });
  });
});

Deno.test("pools API: delete one instance; ambiguity, VM disks and bad references are refused", async (t) => {
  await withPoolCtx(async (p) => {
    await putNode(p, "node-a");
    await putNode(p, "node-b");
    await putNode(p, "node-c");
    const da = await create(p, "dev", "node-a");
    const db = await create(p, "dev", "node-b");
    await create(p, "busy", "node-a");

    await t.step("a name on several nodes without --node: pool_name_ambiguous", async () => {
      const before = await stored(p);
      const r = await p.api("DELETE", "/v1/pools/dev");
      assertEquals([r.status, r.json.error.code], [409, "pool_name_ambiguous"]);
      const msg = r.json.error.message;
      for (
        const part of [
          "node node-a",
          da.id,
          "node node-b",
          db.id,
          "--node <node>",
          "<instance-uuid>",
        ]
      ) {
        assertStringIncludes(msg, part);
      }
      assertEquals(r.json.error.details.instances.map((i: any) => [i.node, i.id]), [
        ["node-a", da.id],
        ["node-b", db.id],
      ]);
      assertEquals(await stored(p), before);
    });

    await t.step("unknown pool, node without an instance, instance on another node", async () => {
      const before = await stored(p);
      for (
        const [path, status, code] of [
          ["/v1/pools/nope", 404, "pool_not_found"],
          [`/v1/pools/${crypto.randomUUID()}`, 404, "pool_not_found"],
          ["/v1/pools/dev?node=node-c", 409, "pool_not_on_node"],
          [`/v1/pools/${da.id}?node=node-b`, 409, "pool_not_on_node"],
          ["/v1/pools/dev?node=Node-A", 400, "validation_failed"],
        ] as const
      ) {
        const r = await p.api("DELETE", path);
        assertEquals([r.status, r.json.error.code], [status, code], path);
      }
      assertEquals(await stored(p), before);
    });

    await t.step("VM disks block deletion (names and count); nothing changes", async () => {
      await putVm(p, "web-2", "busy", "node-a");
      await putVm(p, "web-1", "busy", "node-a");
      await putVm(p, "elsewhere", "busy", "node-b"); // another node: not this instance
      const before = await stored(p);
      const r = await p.api("DELETE", "/v1/pools/busy?node=node-a");
      assertEquals([r.status, r.json.error.code], [409, "conflict"]);
      assertEquals(r.json.error.details.vm_disks, 2);
      assertEquals(r.json.error.details.vms, ["web-1", "web-2"]);
      assertStringIncludes(r.json.error.message, "vm_disks: 2; VMs: web-1, web-2");
      assertEquals(await stored(p), before);
    });

    await t.step("a VM placed between the check and the delete is seen: refused", async () => {
      await create(p, "race", "node-c");
      const raced = { done: false };
      p.beforeTxn.hook = async (req, raw) => {
        const deletes = req.success.some((o) =>
          o.type === "delete" && o.key === keys.pool("race", "node-c")
        );
        if (!deletes || raced.done) return;
        raced.done = true;
        // What a placement commits: the VM and its node's allocation, in one transaction.
        const vm = await putVm(p, "late", "race", "node-c");
        await raw.put(keys.nodeAllocation("node-c"), { vms: 1, vm: vm.id });
      };
      const r = await p.api("DELETE", "/v1/pools/race");
      p.beforeTxn.hook = undefined;
      assert(raced.done);
      assertEquals([r.status, r.json.error.code, r.json.error.details.vms], [409, "conflict", [
        "late",
      ]]);
      assert(await p.ctx.store.get(keys.pool("race", "node-c")), "still there");
    });

    await t.step("by --node, and by UUID; the agent stops being told about it", async () => {
      // Cached images never block: the instance reports some.
      await p.ctx.store.put(keys.pool("dev", "node-a"), {
        ...(await p.ctx.store.get<PoolRecord>(keys.pool("dev", "node-a")))!.value,
        status: "ready",
        images: [{ basename: "img.qcow2", sha256: "a".repeat(64), size_bytes: 1024 }],
      });
      const r = await p.api("DELETE", "/v1/pools/dev?node=node-a");
      assertEquals([r.status, r.json.id, r.json.name, r.json.node], [200, da.id, "dev", "node-a"]);
      assertEquals(p.agents.pushes.at(-1), {
        node: "node-a",
        pools: [{ name: "busy", path: `${p.dir}/pools/busy` }],
      });
      assert(p.logs.has("pool deleted", { pool: "dev", node: "node-a" }));
      const r2 = await p.api("DELETE", `/v1/pools/${db.id}`);
      assertEquals([r2.status, r2.json.node], [200, "node-b"]);
      assertEquals(p.agents.pushes.at(-1), { node: "node-b", pools: [] });
      assertEquals(await stored(p), [
        `busy/node-a=${p.dir}/pools/busy`,
        `race/node-c=${p.dir}/pools/race`,
      ]);
      const again = await p.api("DELETE", `/v1/pools/${db.id}`);
      assertEquals([again.status, again.json.error.code], [404, "pool_not_found"]);
    });
  });
});

Deno.test("cluster default pool: get, set by name in any case, unset; vm create resolves it", async (t) => {
  await withPoolCtx(async (p) => {
    await putNode(p, "node-a");
    await create(p, "fast-ssd", "node-a");
    const get = async () => (await p.api("GET", "/v1/cluster/default-pool")).json;

    await t.step("seeded from storage_pools.default_pool_name", async () => {
      assertEquals((await get()).default_pool_name, "default");
    });

    await t.step("set: case-insensitive name; unknown names, UUIDs change nothing", async () => {
      const r = await p.api("PUT", "/v1/cluster/default-pool", { name: "Fast-SSD" });
      assertEquals([r.status, r.json.default_pool_name], [200, "fast-ssd"]);
      assert(p.logs.has("cluster default pool set", { pool: "fast-ssd", previous: "default" }));
      const listed = (await p.api("GET", "/v1/pools")).json.items;
      assertEquals(listed.map((p: any) => p.is_default), [true]);
      for (
        const [body, status, code] of [
          [{ name: "nope" }, 404, "pool_not_found"],
          [{ name: crypto.randomUUID() }, 400, "validation_failed"],
          [{ name: "bad name" }, 400, "validation_failed"],
          [{}, 400, "validation_failed"],
        ] as const
      ) {
        const bad = await p.api("PUT", "/v1/cluster/default-pool", body);
        assertEquals([bad.status, bad.json.error.code], [status, code], JSON.stringify(body));
      }
      assertEquals((await get()).default_pool_name, "fast-ssd");
    });

    await t.step("vm create without a pool uses the default (scheduled against it)", async () => {
      // The instance is still pending, so placement refuses: proof the default was resolved.
      const r = await p.api("POST", "/v1/vms", {
        name: "vm-1",
        image_url: "http://127.0.0.1:1/img.raw",
        architecture: "amd64",
      });
      assertEquals([r.status, r.json.error.code], [409, "no_eligible_nodes"]);
      assertEquals(r.json.error.details.pool, "fast-ssd");
    });

    await t.step("unset: vm create without a pool is default_pool_not_set", async () => {
      const r = await p.api("DELETE", "/v1/cluster/default-pool");
      assertEquals([r.status, r.json.default_pool_name], [200, null]);
      assertEquals((await get()).default_pool_name, null);
      const vm = await p.api("POST", "/v1/vms", {
        name: "vm-1",
        image_url: "http://127.0.0.1:1/img.raw",
        architecture: "amd64",
      });
      assertEquals([vm.status, vm.json.error.code], [400, "default_pool_not_set"]);
      assertEquals((await p.api("GET", "/v1/pools")).json.items[0].is_default, false);
      // Idempotent.
      assertEquals((await p.api("DELETE", "/v1/cluster/default-pool")).status, 200);
    });
  });
});

Deno.test("pool provisioner: the default pool once per node; an operator's delete sticks", async () => {
  await withPoolCtx(async (p) => {
    const warned = new Set<string>();
    const reconcile = (node: string) => provisionDefaultPool(p.ctx, node, warned);
    const node = await putNode(p, "node-a");
    await reconcile("node-a");
    assertEquals(await stored(p), [`default/node-a=${p.dir}/pools/default`]);
    assert(p.logs.has("default pool provisioned", { node: "node-a" }));

    const r = await p.api("DELETE", "/v1/pools/default?node=node-a");
    assertEquals(r.status, 200);
    await reconcile("node-a");
    assertEquals(await stored(p), [], "not provisioned again");

    // The node is deleted and joins again under the same name: a new id, provisioned again.
    await putNode(p, "node-a", { id: crypto.randomUUID(), created_at: node.created_at });
    await reconcile("node-a");
    assertEquals(await stored(p), [`default/node-a=${p.dir}/pools/default`]);

    // A node whose pools dir is outside the allowed prefixes: one warning, nothing stored.
    await putNode(p, "node-b", { pools_dir: "/elsewhere/pools" });
    await reconcile("node-b");
    await reconcile("node-b");
    assertEquals(
      p.logs.lines.filter((l) =>
        l.msg === "default pool not provisioned: path_not_allowed" && l.node === "node-b"
      ).length,
      1,
    );
    assertEquals((await stored(p)).length, 1);
  });
});
