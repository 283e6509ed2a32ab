/**
 * Declarative manifests end to end on a one-node cluster of real processes
 * (test/e2e/cluster.ts: `otherix-api` and `otherix-agent` under their sandboxes, the real CLI,
 * QEMU under TCG booting the offline test image once): the spec's `cluster.yaml` adapted to
 * the test image (a managed bridge Network, a StoragePool, and a VM with cloud-config and an
 * SSH key made by ssh-keygen) is created in order with `--wait`; the guest's console shows
 * the merged cloud-config arrived (marker, key) and cloud-init's final line; every resource
 * round-trips through `get -o yaml` (applying the projections changes nothing); `apply`
 * refuses an immutable change naming the field; bad input is refused with stable codes and
 * changes nothing; `delete -f` removes everything in reverse order. The VM stays off the
 * network (its bridge would be created on this host): attaching NICs is the networks suite's.
 */
import { join } from "node:path";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { runCli, waitFor } from "../harness.ts";
import { type Json, startCluster } from "./cluster.ts";

Deno.test({
  name: "e2e manifests: create, round-trip, apply, bad input, delete, against real processes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const c = await startCluster({ prefix: "otx-mf" });
    try {
      const home = join(c.root, "home");
      await Deno.mkdir(home, { recursive: true });
      const env = { HOME: home, OTHERIX_SERVER: c.api.url, OTHERIX_API_TOKEN: c.token };
      const cli = (...args: string[]) => runCli(args, env);
      const file = async (name: string, text: string) => {
        const p = join(c.root, name);
        await Deno.writeTextFile(p, text);
        return p;
      };
      const keyFile = join(home, "id_ed25519");
      const kg = await new Deno.Command("ssh-keygen", {
        args: ["-q", "-t", "ed25519", "-N", "", "-C", "e2e@manifests", "-f", keyFile],
      }).output();
      assert(kg.success, new TextDecoder().decode(kg.stderr));
      const pubKey = (await Deno.readTextFile(`${keyFile}.pub`)).trim();
      const poolPath = join(c.agent.stateDir, "pools", "fast");

      const cluster = `# cluster.yaml: a managed bridge, a pool, and a VM (spec 001, adapted)
apiVersion: otherix/v1
kind: Network
metadata:
  name: demo-net
spec:
  type: bridge
  managed: true
  bridgeName: otmfdemo0
  mtu: 1500
---
apiVersion: otherix/v1
kind: VM
metadata:
  name: demo-vm
spec:
  imageURL: ${c.imageUrl()}
  arch: amd64
  pool: fast
  vcpus: 1
  memoryMB: 256
  diskGiB: 1
  # inline cloud-config is sent as user_data at create time:
  userData: |
    #cloud-config
    # otherix-marker: manifests
    package_update: true
  sshAuthorizedKeys:
    - ${pubKey}
---
apiVersion: otherix/v1
kind: StoragePool
metadata:
  name: fast
spec:
  path: ${poolPath}
  node: node-1
`;
      const clusterFile = await file("cluster.yaml", cluster);

      await t.step("create -f --wait: Network → StoragePool → VM", async () => {
        const r = await cli("create", "-f", clusterFile, "--wait", "--wait-timeout", "240s");
        assertEquals(r.code, 0, r.stderr);
        const lines = r.stdout.trim().split("\n");
        assertEquals(lines.slice(0, 3), [
          "network/demo-net created",
          "storagepool/fast on node node-1 created",
          "storagepool/fast on node node-1 ready",
        ]);
        assertMatch(lines[3], /^vm\/demo-vm created task=[0-9a-f-]{36} status=pending$/);
        assertMatch(lines[4], /^vm\/demo-vm running task=[0-9a-f-]{36}$/);
        const vm = (await c.call("GET", "/v1/vms/demo-vm")).json;
        assertEquals([vm.status, vm.pool, vm.memory_mb, vm.disk_gib], ["running", "fast", 256, 1]);
      });

      await t.step("the guest got the cloud-config with the key merged in", async () => {
        const log = await waitFor(
          "cloud-init's final line on the console",
          async () => {
            const r = await cli("vm", "logs", "demo-vm", "--tail-bytes", "65536");
            return r.stdout.includes("Cloud-init v. 0.0-otherix-test finished at")
              ? r.stdout
              : null;
          },
          120_000,
          500,
        );
        assertStringIncludes(log, "otherix-test-image: marker=manifests");
        assertStringIncludes(
          log,
          "otherix-test-image: ssh-authorized-key=ssh-ed25519 e2e@manifests",
        );
        assert(!log.includes("ERROR"), "no cloud-init error line");
      });

      const projected: Json[] = [];
      await t.step("every resource round-trips through get -o yaml", async () => {
        const vm = await cli("vm", "get", "demo-vm", "-o", "yaml");
        assertEquals(vm.code, 0, vm.stderr);
        assertEquals(parse(vm.stdout), {
          apiVersion: "otherix/v1",
          kind: "VM",
          metadata: { name: "demo-vm" },
          spec: {
            imageURL: c.imageUrl(),
            arch: "amd64",
            vcpus: 1,
            memoryMB: 256,
            pool: "fast",
            node: "node-1",
            restartPolicy: "on-failure",
          },
        });
        const pool = await cli("pool", "get", "fast", "-o", "yaml");
        assertEquals(pool.code, 0, pool.stderr);
        assertEquals(parse(pool.stdout), {
          apiVersion: "otherix/v1",
          kind: "StoragePool",
          metadata: { name: "fast" },
          spec: { type: "local_dir", path: poolPath, node: "node-1" },
        });
        const net = await cli("network", "get", "demo-net", "-o", "yaml");
        assertEquals(net.code, 0, net.stderr);
        const n = parse(net.stdout);
        assertEquals([n.kind, n.metadata.name], ["Network", "demo-net"]);
        assertEquals(
          [n.spec.type, n.spec.managed, n.spec.bridgeName, n.spec.mtu],
          ["bridge", true, "otmfdemo0", 1500],
        );
        assertMatch(n.spec.subnet, /^\d+\.\d+\.\d+\.\d+\/\d+$/, "the server's subnet, projected");
        const json = await cli("vm", "get", "demo-vm", "-o", "json");
        assertEquals(JSON.parse(json.stdout).status, "running", "-o json stays the raw view");
        projected.push(net.stdout, pool.stdout, vm.stdout);
      });

      await t.step("applying the projections, then the source, changes nothing", async () => {
        const back = await file("roundtrip.yaml", projected.join("---\n"));
        const r = await cli("apply", "-f", back);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(
          r.stdout,
          "network/demo-net unchanged\nstoragepool/fast on node node-1 unchanged\n" +
            "vm/demo-vm unchanged\n",
        );
        const again = await cli("apply", "-f", clusterFile);
        assertEquals([again.code, again.stdout], [0, r.stdout], again.stderr);
      });

      await t.step("apply refuses an immutable change, naming the field", async () => {
        const changed = await file(
          "changed.yaml",
          cluster.replace("memoryMB: 256", "memoryMB: 512"),
        );
        const r = await cli("apply", "-f", changed);
        assertEquals(r.code, 1);
        assertMatch(
          r.stderr,
          /api_error: conflict: \S+changed\.yaml document 2 \(VM demo-vm\): spec\.memoryMB: cannot change vm\/demo-vm: the field is immutable \(manifest 512, live 256\)/,
        );
        assertEquals((await c.call("GET", "/v1/vms/demo-vm")).json.memory_mb, 256);
      });

      await t.step(
        "bad input: stable codes, the document and field named, nothing changed",
        async () => {
          const state = async () => ({
            vms: (await c.call("GET", "/v1/vms")).json.items.map((v: Json) => v.name),
            pools: (await c.call("GET", "/v1/pools")).json.items.map((p: Json) => p.name),
            networks: (await c.call("GET", "/v1/networks")).json.items.map((n: Json) => n.name),
          });
          const before = await state();
          const vmDoc = (name: string, extra: string) =>
            `apiVersion: otherix/v1\nkind: VM\nmetadata:\n  name: ${name}\nspec:\n` +
            `  imageURL: ${c.imageUrl()}\n  arch: amd64\n${extra}`;
          const ok = "apiVersion: otherix/v1\nkind: StoragePool\nmetadata:\n  name: extra\n" +
            `spec:\n  path: ${join(c.agent.stateDir, "pools", "extra")}\n  node: node-1\n---\n`;
          const cases: [string, string, RegExp][] = [
            [
              "apiVersion: otherix/v1\nkind: Volume\nmetadata: {name: v}\nspec: {}\n",
              "validation_failed",
              /document 1 \(Volume v\): kind: must be one of Network, StoragePool, VM/,
            ],
            [
              "apiVersion: v1\nkind: VM\nmetadata: {name: v}\nspec: {}\n",
              "validation_failed",
              /document 1 \(VM v\): apiVersion: must be "otherix\/v1"/,
            ],
            [
              ok + vmDoc("v", "  pool: nope\n"),
              "pool_not_found",
              /document 2 \(VM v\): spec\.pool: /,
            ],
            [
              ok + vmDoc("v", "  network: nope\n"),
              "network_not_found",
              /document 2 \(VM v\): spec\.network: /,
            ],
            [
              ok + vmDoc("v", `  sshAuthorizedKeys: ["${pubKey}", "${pubKey.slice(0, 40)}"]\n`),
              "validation_failed",
              /document 2 \(VM v\): spec\.sshAuthorizedKeys\.1: not an SSH public key: /,
            ],
            [
              ok + vmDoc("v", '  userData: "#!/bin/sh\\necho hi\\n"\n'),
              "validation_failed",
              /document 2 \(VM v\): spec\.userData: must be cloud-config/,
            ],
            [
              ok + "apiVersion: otherix/v1\nkind: Network\nmetadata: {name: n2}\nspec:\n" +
              "  type: bridge\n  managed: true\n  bridgeName: otmfbad0\n  mtu: 100\n",
              "validation_failed",
              /document 2 \(Network n2\): spec\.mtu: /,
            ],
          ];
          for (const [text, code, why] of cases) {
            const r = await cli("create", "-f", await file("bad.yaml", text));
            assertEquals(r.code, 1, `${text}\n${r.stdout}`);
            assertMatch(r.stderr, new RegExp(`^api_error: ${code}: \\S+bad\\.yaml `, "m"));
            assertMatch(r.stderr, why);
          }
          // The server's own refusal (an overlapping subnet) after an earlier document.
          const subnet = (await c.call("GET", "/v1/networks/demo-net")).json.subnet;
          const overlap = await cli(
            "create",
            "-f",
            await file(
              "overlap.yaml",
              "apiVersion: otherix/v1\nkind: Network\nmetadata: {name: n3}\nspec:\n" +
                `  type: overlay\n  subnet: ${subnet}\n`,
            ),
          );
          assertEquals(overlap.code, 1);
          assertMatch(
            overlap.stderr,
            /api_error: network_subnet_overlap: \S+overlap\.yaml document 1 \(Network n3\): /,
          );
          assertStringIncludes(overlap.stderr, "nothing was created\n");
          // A malformed key given to vm create directly: the server names its index.
          const direct = await cli(
            "vm",
            "create",
            "v",
            "--image-url",
            c.imageUrl(),
            "--ssh-key",
            "ssh-ed25519 AAAA",
          );
          assertEquals(direct.code, 1);
          assertMatch(
            direct.stderr,
            /^api_error: validation_failed: invalid request body: ssh_authorized_keys\.0: not an SSH public key/,
          );
          assertEquals(await state(), before);
        },
      );

      await t.step("vm ssh without an address: vm_has_no_address", async () => {
        const r = await cli("vm", "ssh", "demo-vm");
        assertEquals(r.code, 1);
        assertMatch(r.stderr, /^api_error: vm_has_no_address: vm demo-vm has no known address/);
      });

      await t.step("delete -f --force: VM → StoragePool → Network, nothing left", async () => {
        const r = await cli("delete", "-f", clusterFile, "--force");
        assertEquals(r.code, 0, r.stderr);
        const lines = r.stdout.trim().split("\n");
        assertMatch(lines[0], /^vm\/demo-vm deleted task=[0-9a-f-]{36} status=pending$/);
        assertEquals(lines.slice(1), [
          "vm/demo-vm gone",
          "storagepool/fast on node node-1 deleted",
          "network/demo-net deleted",
        ]);
        assertEquals((await c.call("GET", "/v1/vms/demo-vm")).status, 404);
        assertEquals((await c.call("GET", "/v1/pools/fast")).status, 404);
        assertEquals((await c.call("GET", "/v1/networks/demo-net")).status, 404);
        await waitFor(
          "demo-vm's QEMU gone",
          () => Promise.resolve(c.qemuPids("demo-vm").length === 0),
          30_000,
          100,
        );
      });
    } finally {
      await c.close();
    }
  },
});
