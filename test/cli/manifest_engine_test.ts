/**
 * `otherix create|apply|delete -f` in process (`run()` with a fake Io) against an in-memory
 * control plane (manifest_fake_cluster.ts): the order of the requests, what each command
 * prints, every refusal happening before anything is created, a failure midway reporting
 * what was created and leaving nothing of the failing document, and deletion in reverse order.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import { fakeIo } from "./fixtures.ts";
import { FakeCluster } from "./manifest_fake_cluster.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };
const IMG = "http://127.0.0.1:8000/images/otherix-test.img";

const POOL = `apiVersion: otherix/v1
kind: StoragePool
metadata:
  name: fast
spec:
  path: /var/lib/otherix/pools/fast
  nodeList: [node-a, node-b]
`;
const vm = (name: string, extra = "") =>
  `apiVersion: otherix/v1
kind: VM
metadata:
  name: ${name}
spec:
  imageURL: ${IMG}
  arch: amd64
  pool: fast
  memoryMB: 256
${extra}`;
const NET = `apiVersion: otherix/v1
kind: Network
metadata:
  name: demo-net
spec:
  type: bridge
  managed: true
  bridgeName: otdemo0
  mtu: 1500
`;
const CLUSTER = [vm("demo-vm"), POOL].join("---\n");

/** Runs the CLI with `files` readable, against `c`. */
async function cli(
  c: FakeCluster,
  args: string[],
  files: Record<string, string>,
  tty = false,
  answers: string[] = [],
) {
  const io = fakeIo({ env: API, fetch: c.fetch(), files, tty, answers });
  const code = await run(args, io);
  return { code, stdout: io.stdout, stderr: io.stderr, prompts: io.prompts };
}

Deno.test("create -f: Network → StoragePool → VM, pools waited for when a VM needs them, --wait", async (t) => {
  await t.step("the spec's example (adapted): pool on two nodes, then the VM", async () => {
    const c = new FakeCluster();
    const r = await cli(c, ["create", "-f", "cluster.yaml", "--wait"], { "cluster.yaml": CLUSTER });
    assertEquals(r.code, 0, r.stderr);
    const task = [...c.tasks.keys()][0];
    assertEquals(
      r.stdout,
      "storagepool/fast on node node-a created\nstoragepool/fast on node node-b created\n" +
        "storagepool/fast on node node-a ready\nstoragepool/fast on node node-b ready\n" +
        `vm/demo-vm created task=${task} status=pending\nvm/demo-vm running task=${task}\n`,
    );
    assertEquals(c.writes(), ["POST /v1/pools", "POST /v1/pools", "POST /v1/vms"]);
    assertEquals(c.vms.get("demo-vm")?.memory_mb, 256);
  });

  await t.step("networks are created first; several files; without --wait no VM wait", async () => {
    const c = new FakeCluster();
    c.pools.push(c.instance("fast", "node-a", "/var/lib/otherix/pools/fast"));
    const files = {
      "vm.yaml": vm("a", "  network: demo-net\n") + "---\n" + vm("b"),
      "net.yaml": NET,
    };
    const r = await cli(c, ["create", "-f", "vm.yaml", "-f", "net.yaml"], files);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(c.writes(), ["POST /v1/networks", "POST /v1/vms", "POST /v1/vms"]);
    assertMatch(
      r.stdout,
      /^network\/demo-net created\nvm\/a created task=\S+ status=pending\nvm\/b created/,
    );
    assertEquals(c.networks!.get("demo-net")?.bridge_name, "otdemo0");
    const sent = c.seen.filter((s) =>
      s.path === "/v1/vms" && s.method === "POST" && !s.query.get("dry_run")
    );
    assertEquals(sent.map((s) => (s.body as { networks?: string[] }).networks), [
      ["demo-net"],
      undefined,
    ]);
    // The VM's first NIC is on the network: applying the same files changes nothing.
    const again = await cli(c, ["apply", "-f", "vm.yaml", "-f", "net.yaml"], files);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(again.stdout, "network/demo-net unchanged\nvm/a unchanged\nvm/b unchanged\n");
    const moved = { ...files, "vm.yaml": files["vm.yaml"].replace("demo-net", "other") };
    c.networks!.set("other", { ...c.networks!.get("demo-net")!, name: "other" });
    const refused = await cli(c, ["apply", "-f", "vm.yaml", "-f", "net.yaml"], moved);
    assertMatch(
      refused.stderr,
      /api_error: conflict: vm\.yaml document 1 \(VM a\): spec\.network: cannot change vm\/a: the field is immutable \(manifest "other", live "demo-net"\)/,
    );
  });

  await t.step("a VM without pool waits for the cluster default pool it declares", async () => {
    const c = new FakeCluster();
    const pool = POOL.replace("name: fast", "name: default").replace(
      "[node-a, node-b]",
      "[node-a]",
    );
    const r = await cli(c, ["create", "-f", "c.yaml"], {
      "c.yaml": pool + "---\n" + vm("v").replace("  pool: fast\n", ""),
    });
    assertEquals(r.code, 0, r.stderr);
    assertMatch(
      r.stdout,
      /^storagepool\/default on node node-a created\nstoragepool\/default on node node-a ready\nvm\/v created /,
    );
  });

  await t.step(
    "an existing resource: vm_already_exists naming the document, nothing created",
    async () => {
      const c = new FakeCluster();
      await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
      const writes = c.writes().length;
      const r = await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
      assertEquals(r.code, 1);
      assertMatch(
        r.stderr,
        /^api_error: conflict: c\.yaml document 2 \(StoragePool fast\): storagepool\/fast on node node-a already exists/m,
      );
      assertEquals(c.writes().length, writes);
      c.pools.length = 0;
      const r2 = await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
      assertMatch(
        r2.stderr,
        /^api_error: vm_already_exists: c\.yaml document 1 \(VM demo-vm\): vm\/demo-vm already exists/m,
      );
      assertEquals(c.writes().length, writes);
    },
  );
});

Deno.test("create -f: references and placement are checked before anything is created", async (t) => {
  const refused = async (
    files: Record<string, string>,
    setup: (c: FakeCluster) => void,
    code: string,
    message: RegExp,
  ) => {
    const c = new FakeCluster();
    setup(c);
    const r = await cli(c, ["create", "-f", Object.keys(files)[0]], files);
    assertEquals(r.code, 1, r.stdout);
    assertMatch(r.stderr, new RegExp(`^api_error: ${code}: `, "m"));
    assertMatch(r.stderr, message);
    assertEquals(c.writes(), [], "nothing created");
  };
  await t.step(
    "a VM naming a missing pool",
    () =>
      refused(
        { "m.yaml": vm("v") },
        () => {},
        "pool_not_found",
        /document 1 \(VM v\): spec\.pool: pool fast not found/,
      ),
  );
  await t.step("a VM naming a missing network (declared networks are fine)", () =>
    refused(
      { "m.yaml": vm("v").replace("  pool: fast\n", "") + "  network: nope\n" },
      () => {},
      "network_not_found",
      /document 1 \(VM v\): spec\.network: network nope not found/,
    ));
  await t.step(
    "a VM on a missing node",
    () =>
      refused(
        { "m.yaml": POOL + "---\n" + vm("v", "  node: node-z\n") },
        () => {},
        "node_not_found",
        /document 2 \(VM v\): spec\.node: node node-z not found/,
      ),
  );
  await t.step(
    "a pool on a missing node names its nodeList entry",
    () =>
      refused(
        { "m.yaml": POOL.replace("node-b", "node-z") },
        () => {},
        "node_not_found",
        /spec\.nodeList\.1: node node-z not found/,
      ),
  );
  await t.step(
    "no pool and no cluster default",
    () =>
      refused(
        { "m.yaml": vm("v").replace("  pool: fast\n", "") },
        (c) => (c.defaultPool = null),
        "default_pool_not_set",
        /spec\.pool: /,
      ),
  );
  await t.step("no node has room (the dry run)", () =>
    refused(
      { "m.yaml": vm("v") },
      (c) => {
        c.pools.push(c.instance("fast", "node-a", "/p"));
        c.noRoom = true;
      },
      "no_eligible_nodes",
      /document 1 \(VM v\): no node can take vm\/v in pool fast/,
    ));
  await t.step(
    "a Network document while the control plane has no network API",
    () =>
      refused(
        { "m.yaml": NET },
        (c) => (c.networks = null),
        "not_found",
        /m\.yaml document 1 \(Network demo-net\): this control plane has no network API/,
      ),
  );
  await t.step(
    "a bad document after good ones: nothing created",
    () =>
      refused(
        { "m.yaml": POOL + "---\n" + vm("v", "  vcpus: 0\n") },
        () => {},
        "validation_failed",
        /document 2 \(VM v\): spec\.vcpus: /,
      ),
  );
});

Deno.test("create -f: a failure midway lists what was created and leaves nothing of its document", async (t) => {
  await t.step("the server refuses the VM: the pool stays (its document succeeded)", async () => {
    const c = new FakeCluster();
    c.refuse.set("demo-vm", [409, "no_eligible_nodes", "no node has room"]);
    const r = await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
    assertEquals(r.code, 1);
    assertStringIncludes(
      r.stderr,
      "created before the failure: storagepool/fast on node node-a, storagepool/fast on node node-b\n",
    );
    assertMatch(
      r.stderr,
      /api_error: no_eligible_nodes: c\.yaml document 1 \(VM demo-vm\): no node has room\n$/,
    );
    assertEquals(c.pools.length, 2);
  });

  await t.step("the second instance of a pool is refused: the first one is removed", async () => {
    const c = new FakeCluster();
    c.refuse.set("fast/node-b", [400, "path_not_allowed", "path not under an allowed prefix"]);
    const r = await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
    assertEquals(r.code, 1);
    assertEquals(c.writes(), [
      "POST /v1/pools",
      "POST /v1/pools",
      "DELETE /v1/pools/fast?node=node-a",
    ]);
    assertEquals(c.pools, []);
    assertStringIncludes(
      r.stderr,
      "storagepool/fast on node node-a removed (its document failed)\n",
    );
    assertStringIncludes(r.stderr, "nothing was created\n");
    assertMatch(
      r.stderr,
      /api_error: path_not_allowed: c\.yaml document 2 \(StoragePool fast\): path not under an allowed prefix\n$/,
    );
  });

  await t.step("an instance the agent reports failed: the document's instances go", async () => {
    const c = new FakeCluster();
    c.failPool.set("fast/node-b", "path_not_allowed: /var/lib/otherix/pools/fast is a symlink");
    const r = await cli(c, ["create", "-f", "c.yaml"], { "c.yaml": CLUSTER });
    assertEquals(r.code, 1);
    assertEquals(c.pools, []);
    assertEquals(c.vms.size, 0);
    assertMatch(
      r.stderr,
      /api_error: path_not_allowed: c\.yaml document 2 \(StoragePool fast\): storagepool\/fast on node node-b failed: path_not_allowed: /,
    );
  });

  await t.step(
    "--wait: a VM whose create task fails is deleted; the task's code is reported",
    async () => {
      const c = new FakeCluster();
      c.failCreateTask.set("demo-vm", { code: "image_unavailable", message: "HTTP 404" });
      const r = await cli(c, ["create", "-f", "c.yaml", "--wait"], { "c.yaml": CLUSTER });
      assertEquals(r.code, 1);
      assert(!c.vms.has("demo-vm"));
      assertStringIncludes(r.stderr, "vm/demo-vm removed (its create task failed)\n");
      assertMatch(
        r.stderr,
        /api_error: image_unavailable: c\.yaml document 1 \(VM demo-vm\): create task \S+ failed: HTTP 404\n$/,
      );
      assertStringIncludes(
        r.stderr,
        "created before the failure: storagepool/fast on node node-a, storagepool/fast on node node-b\n",
      );
    },
  );
});

Deno.test("apply -f: creates what is missing, reports unchanged, refuses immutable changes by field", async (t) => {
  const c = new FakeCluster();
  await t.step("first apply creates everything", async () => {
    const r = await cli(c, ["apply", "-f", "c.yaml"], { "c.yaml": CLUSTER });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(c.writes(), ["POST /v1/pools", "POST /v1/pools", "POST /v1/vms"]);
  });
  await t.step("again: everything unchanged, nothing sent", async () => {
    const r = await cli(c, ["apply", "-f", "c.yaml"], { "c.yaml": CLUSTER });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      r.stdout,
      "storagepool/fast on node node-a unchanged\nstoragepool/fast on node node-b unchanged\n" +
        "vm/demo-vm unchanged\n",
    );
    assertEquals(c.writes().length, 3);
  });
  await t.step("one more VM in the file: only it is created", async () => {
    const r = await cli(c, ["apply", "-f", "c.yaml"], {
      "c.yaml": CLUSTER + "---\n" + vm("second"),
    });
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stdout, /vm\/demo-vm unchanged\nvm\/second created task=/);
    assertEquals(c.writes().slice(3), ["POST /v1/vms"]);
  });
  await t.step("a changed immutable field is refused naming it; nothing is created", async () => {
    const changed = CLUSTER.replace("memoryMB: 256", "memoryMB: 4096") + "---\n" + vm("third");
    const r = await cli(c, ["apply", "-f", "c.yaml"], { "c.yaml": changed });
    assertEquals(r.code, 1);
    assertMatch(
      r.stderr,
      /^api_error: conflict: c\.yaml document 1 \(VM demo-vm\): spec\.memoryMB: cannot change vm\/demo-vm: the field is immutable \(manifest 4096, live 256\)/m,
    );
    assert(!c.vms.has("third"));
    const moved = CLUSTER.replace("/var/lib/otherix/pools/fast", "/var/lib/otherix/pools/other");
    const r2 = await cli(c, ["apply", "-f", "c.yaml"], { "c.yaml": moved });
    assertMatch(
      r2.stderr,
      /document 2 \(StoragePool fast\): spec\.path: cannot change storagepool\/fast on node node-a/,
    );
    assertEquals(c.writes().length, 4);
  });
});

Deno.test("delete -f: reverse order, confirmation unless --force, gone resources skipped", async (t) => {
  const files = { "c.yaml": NET + "---\n" + CLUSTER };
  const c = new FakeCluster();
  await cli(c, ["create", "-f", "c.yaml"], files);
  const created = c.writes().length;

  await t.step("without a terminal and without --force: refused, nothing deleted", async () => {
    const r = await cli(c, ["delete", "-f", "c.yaml"], files);
    assertEquals(r.code, 1);
    assertMatch(
      r.stderr,
      /^error: refusing to delete vm\/demo-vm, storagepool\/fast on node node-b, storagepool\/fast on node node-a, network\/demo-net without confirmation/,
    );
    assertEquals(c.writes().length, created);
  });

  await t.step("answered no at the prompt: nothing deleted", async () => {
    const r = await cli(c, ["delete", "-f", "c.yaml"], files, true, ["n"]);
    assertEquals(r.code, 1);
    assertEquals(r.prompts.length, 1);
    assertStringIncludes(r.prompts[0], "Delete vm/demo-vm, storagepool/fast on node node-b");
    assertEquals(c.writes().length, created);
  });

  await t.step("--force: VM (waited for, its disk blocks the pool), pools, network", async () => {
    const r = await cli(c, ["delete", "-f", "c.yaml", "--force"], files);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(c.writes().slice(created), [
      "DELETE /v1/vms/demo-vm",
      "DELETE /v1/pools/fast?node=node-b",
      "DELETE /v1/pools/fast?node=node-a",
      "DELETE /v1/networks/demo-net",
    ]);
    assertMatch(
      r.stdout,
      /^vm\/demo-vm deleted task=\S+ status=pending\nvm\/demo-vm gone\nstoragepool\/fast on node node-b deleted\nstoragepool\/fast on node node-a deleted\nnetwork\/demo-net deleted\n$/,
    );
    assertEquals([c.vms.size, c.pools.length, c.networks!.size], [0, 0, 0]);
  });

  await t.step("again: everything is already gone (skipped, exit 0)", async () => {
    const r = await cli(c, ["delete", "-f", "c.yaml", "--force"], files);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      r.stdout,
      "vm/demo-vm not found (skipped)\nstoragepool/fast on node node-b not found (skipped)\n" +
        "storagepool/fast on node node-a not found (skipped)\nnetwork/demo-net not found (skipped)\n",
    );
  });
});

Deno.test("create -f: unreadable and empty files are usage errors before any request", async () => {
  const c = new FakeCluster();
  const r = await cli(c, ["create", "-f", "nope.yaml"], {});
  assertEquals(r.code, 1);
  assertMatch(r.stderr, /^error: cannot read manifest nope\.yaml: /);
  const e = await cli(c, ["create", "-f", "e.yaml"], { "e.yaml": "---\n# nothing\n" });
  assertEquals(e.stderr, "error: no manifest documents in e.yaml\n");
  assertEquals(c.seen, []);
});
