/**
 * Manifest documents without a server: parsing multi-document YAML (cli/manifests/
 * documents.ts), checking each document against its kind and the API's own request schema
 * (errors name the document and the field), ordering (Network → StoragePool → VM), and the
 * projections back to manifests with exactly the spec's round-trip caveats.
 */
import { parse } from "yaml";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { ApiCallError } from "../../cli/errors.ts";
import { type ManifestDoc, parseManifestText } from "../../cli/manifests/documents.ts";
import { planTargets } from "../../cli/manifests/engine.ts";
import { networkTarget, projectNetwork } from "../../cli/manifests/network_kind.ts";
import { projectPool } from "../../cli/manifests/pool_kind.ts";
import { renderManifests } from "../../cli/manifests/render.ts";
import { refOf } from "../../cli/manifests/target.ts";
import { projectVm, vmNetworksSupported } from "../../cli/manifests/vm_kind.ts";
import type { NetworkManifest } from "../../shared/api/manifests.ts";
import type { Pool } from "../../shared/api/pools.ts";
import { NOW, uuid, vmFixture } from "./fixtures.ts";

const ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhcFOCBiy6KxO6Ah7vJwE0nD2hX7OKP8n0z3T2IdnJH me@ed";

/** The spec's cluster.yaml, adapted: a pool on two nodes instead of the network when absent. */
const CLUSTER = `apiVersion: otherix/v1
kind: VM
metadata:
  name: demo-vm
spec:
  imageURL: http://127.0.0.1:8000/images/otherix-test.img
  arch: amd64
  pool: fast
  vcpus: 2
  memoryMB: 2048
  # inline cloud-config is sent as user_data at create time:
  userData: |
    #cloud-config
    package_update: true
  sshAuthorizedKeys:
    - ${ED}
---
apiVersion: otherix/v1
kind: StoragePool
metadata:
  name: fast
spec:
  path: /var/lib/otherix/pools/fast
  nodeList: [node-a, node-b]
---
`;

/** The error `fn` throws: an ApiCallError (ManifestError), as the CLI would print it. */
function refusal(fn: () => unknown): ApiCallError {
  try {
    fn();
  } catch (e) {
    assert(e instanceof ApiCallError, String(e));
    return e;
  }
  throw new Error("accepted");
}

const docError = (text: string) => refusal(() => planTargets(parseManifestText(text, "m.yaml")));

const vmDoc = (spec: string, name = "v") =>
  `apiVersion: otherix/v1\nkind: VM\nmetadata:\n  name: ${name}\nspec:\n${spec}`;
const VM_BASE = "  imageURL: http://h/x.img\n  arch: amd64\n";

Deno.test("manifests: the spec's example parses; documents are ordered Network → StoragePool → VM", () => {
  const docs = parseManifestText(CLUSTER, "cluster.yaml");
  assertEquals(docs.map((d) => [d.source.index, d.manifest.kind]), [[1, "VM"], [2, "StoragePool"]]);
  const targets = planTargets(docs);
  assertEquals(targets.map(refOf), [
    "storagepool/fast on node node-a",
    "storagepool/fast on node node-b",
    "vm/demo-vm",
  ]);
  assertEquals(targets[2].body, {
    name: "demo-vm",
    image_url: "http://127.0.0.1:8000/images/otherix-test.img",
    architecture: "amd64",
    vcpus: 2,
    memory_mb: 2048,
    user_data: "#cloud-config\npackage_update: true\n",
    ssh_authorized_keys: [ED],
    pool: "fast",
  });
  assertEquals(targets[1].body, {
    name: "fast",
    node: "node-b",
    path: "/var/lib/otherix/pools/fast",
  });
});

Deno.test("manifests: each bad document is refused naming the document and the field", async (t) => {
  const cases: [string, string, string, RegExp][] = [
    [
      "unknown kind",
      "apiVersion: otherix/v1\nkind: Volume\nmetadata: {name: v}\nspec: {}\n",
      "kind",
      /m\.yaml document 1 \(Volume v\): kind: must be one of Network, StoragePool, VM/,
    ],
    [
      "bad apiVersion",
      "apiVersion: otherix/v2\nkind: VM\nmetadata: {name: v}\nspec: {}\n",
      "apiVersion",
      /document 1 \(VM v\): apiVersion: must be "otherix\/v1"/,
    ],
    [
      "no name",
      "apiVersion: otherix/v1\nkind: VM\nmetadata: {}\nspec: {}\n",
      "metadata.name",
      /document 1 \(VM\): metadata\.name: /,
    ],
    [
      "a UUID as name",
      `apiVersion: otherix/v1\nkind: VM\nmetadata: {name: ${uuid(1)}}\nspec: {}\n`,
      "metadata.name",
      /must be a name, not a UUID/,
    ],
    ["unknown field", vmDoc(VM_BASE + "  memoryMb: 512\n"), "spec.memoryMb", /unknown field/],
    ["not a mapping", "- a\n- b\n", null as unknown as string, /must be a mapping/],
    ["not YAML", "apiVersion: [\n", null as unknown as string, /not valid YAML/],
    ["missing imageURL", vmDoc("  arch: amd64\n"), "spec.imageURL", /expected string/i],
    [
      "memory too small",
      vmDoc(VM_BASE + "  memoryMB: 8\n"),
      "spec.memoryMB",
      />=\s*64|at least|too small/i,
    ],
    ["bad arch", vmDoc("  imageURL: http://h/x.img\n  arch: riscv64\n"), "spec.arch", /amd64/],
    [
      "bad image URL",
      vmDoc("  imageURL: ftp://h/x.img\n  arch: amd64\n"),
      "spec.imageURL",
      /http\(s\)/,
    ],
    [
      "malformed SSH key",
      vmDoc(VM_BASE + `  sshAuthorizedKeys: ["${ED}", "ssh-ed25519 AAAA"]\n`),
      "spec.sshAuthorizedKeys.1",
      /not an SSH public key/,
    ],
    [
      "userData not cloud-config",
      vmDoc(VM_BASE + '  userData: "#!/bin/sh\\necho hi\\n"\n'),
      "spec.userData",
      /must be cloud-config/,
    ],
    [
      "unsupported spec field",
      vmDoc(VM_BASE + "  firmware: uefi\n"),
      "spec.firmware",
      /not supported by this version/,
    ],
    [
      "pool on no node",
      "apiVersion: otherix/v1\nkind: StoragePool\nmetadata: {name: p}\nspec: {path: /x}\n",
      "spec.node",
      /exactly one of node and nodeList/,
    ],
    [
      "pool on node and nodeList",
      "apiVersion: otherix/v1\nkind: StoragePool\nmetadata: {name: p}\n" +
      "spec: {path: /x, node: a, nodeList: [b]}\n",
      "spec.nodeList",
      /exactly one/,
    ],
    [
      "pool node a UUID",
      "apiVersion: otherix/v1\nkind: StoragePool\nmetadata: {name: p}\n" +
      `spec: {path: /x, nodeList: [a, ${uuid(3)}]}\n`,
      "spec.nodeList.1",
      /not a UUID/,
    ],
    [
      "the same VM twice",
      vmDoc(VM_BASE) + "\n---\n" + vmDoc(VM_BASE),
      "metadata.name",
      /document 2 \(VM v\): metadata\.name: vm\/v is declared twice \(also by m\.yaml document 1/,
    ],
  ];
  for (const [what, text, field, message] of cases) {
    await t.step(what, () => {
      const e = docError(text);
      assertEquals(e.code, "validation_failed");
      assertEquals(e.details?.field ?? null, field ?? null);
      assertEquals(e.details?.file, "m.yaml");
      assertMatch(e.message, message);
      assertMatch(e.render(), /^api_error: validation_failed: m\.yaml document \d+[ :]/);
    });
  }

  await t.step("Network documents are judged by the network API's own rules", () => {
    const net = (spec: string) =>
      `apiVersion: otherix/v1\nkind: Network\nmetadata: {name: n}\nspec:\n${spec}`;
    const cases: [string, string, RegExp][] = [
      ["  type: vlan\n", "spec.type", /bridge|overlay/],
      [
        "  type: bridge\n  managed: true\n  bridgeName: otdemo0\n  mtu: 100\n",
        "spec.mtu",
        /at least 1280/,
      ],
      [
        "  type: bridge\n  managed: true\n  bridgeName: otdemo0\n  subnet: 10.0.0.1/24\n",
        "spec.subnet",
        /host bits are set/,
      ],
      ["  type: overlay\n  bridgeName: otov0\n", "spec.bridgeName", /server-derived/],
      ["  type: bridge\n  managed: true\n", "spec.bridgeName", /required/],
      ["  type: bridge\n  bridgeName: br0\n  vlan: 10\n", "spec.vlan", /unknown field/],
    ];
    for (const [spec, field, why] of cases) {
      const e = docError(net(spec));
      assertEquals([e.code, e.details?.field], ["validation_failed", field], spec);
      assertMatch(e.message, why);
    }
  });

  await t.step("a VM's network becomes its first NIC's network in the request", () => {
    assert(vmNetworksSupported());
    const [t1] = planTargets(parseManifestText(vmDoc(VM_BASE + "  network: demo-net\n"), "m.yaml"));
    assertEquals(t1.body.networks, ["demo-net"]);
    const e = docError(vmDoc(VM_BASE + "  network: Demo_Net\n"));
    assertEquals(e.details?.field, "spec.network.0");
  });

  await t.step("the document index counts from 1 per file, empty documents included", () => {
    const e = refusal(() =>
      planTargets(
        parseManifestText(
          vmDoc(VM_BASE) + "\n---\n---\n" + vmDoc("  arch: amd64\n", "w"),
          "f.yaml",
        ),
      )
    );
    assertMatch(e.message, /^f\.yaml document 3 \(VM w\): spec\.imageURL: /);
  });
});

Deno.test("manifests: projections carry exactly the spec's round-trip caveats", async (t) => {
  await t.step(
    "VM: no userData, keys, networkConfig, firmware or diskGiB; the first NIC only",
    () => {
      const plain = vmFixture({ image_sha256: "a".repeat(64), disk_gib: 20 });
      const vm = {
        ...plain,
        nics: [
          { index: 1, network: "backend", mac: "52:54:00:00:00:02", addresses: [] },
          {
            index: 0,
            network: "lan",
            mac: "52:54:00:00:00:01",
            addresses: [{ address: "192.168.1.20", prefix_length: 24, source: "ipam" as const }],
          },
        ],
      };
      const m = projectVm(vm);
      assertEquals(m, {
        apiVersion: "otherix/v1",
        kind: "VM",
        metadata: { name: "demo-vm" },
        spec: {
          imageURL: vm.image_url,
          imageSHA256: "a".repeat(64),
          arch: "amd64",
          network: "lan",
          vcpus: 2,
          memoryMB: 2048,
          pool: "default",
          node: "node-a",
          restartPolicy: "on-failure",
        },
      });
      assertEquals(projectVm(plain).spec.network, undefined, "no NICs: no network");
    },
  );

  await t.step("StoragePool: one nodeList document when the paths agree, else one per node", () => {
    const inst = (node: string, path: string) => ({
      id: uuid(node.length),
      name: "fast",
      node,
      type: "local_dir" as const,
      path,
      status: "ready" as const,
      message: null,
      total_bytes: null,
      available_bytes: null,
      images: [],
      images_total: 0,
      is_default: false,
      effective_available_bytes: null,
      pending_vm_disk_bytes: 0,
      pressure: null,
      last_scan: null,
      last_scan_error: null,
      created_at: new Date(NOW).toISOString(),
      updated_at: new Date(NOW).toISOString(),
    });
    const pool = (instances: ReturnType<typeof inst>[]): Pool => ({
      name: "fast",
      type: "local_dir",
      is_cluster_default: false,
      instances,
    });
    assertEquals(
      projectPool(pool([inst("node-b", "/p"), inst("node-a", "/p")])).map((m) => m.spec),
      [
        { type: "local_dir", path: "/p", nodeList: ["node-a", "node-b"] },
      ],
    );
    assertEquals(projectPool(pool([inst("node-a", "/p")])).map((m) => m.spec), [
      { type: "local_dir", path: "/p", node: "node-a" },
    ]);
    assertEquals(
      projectPool(pool([inst("node-a", "/p"), inst("node-b", "/q")])).map((m) => m.spec),
      [
        { type: "local_dir", path: "/p", node: "node-a" },
        { type: "local_dir", path: "/q", node: "node-b" },
      ],
    );
  });

  await t.step("Network: a bridge in full; an overlay as type and subnet only", () => {
    assertEquals(
      projectNetwork({
        name: "demo-net",
        type: "bridge",
        managed: true,
        bridge_name: "otdemo0",
        mtu: 1500,
        subnet: "10.77.0.0/24",
        gateway: "10.77.0.1",
      }).spec,
      {
        type: "bridge",
        managed: true,
        bridgeName: "otdemo0",
        mtu: 1500,
        subnet: "10.77.0.0/24",
        gateway: "10.77.0.1",
      },
    );
    assertEquals(
      projectNetwork({
        name: "ov",
        type: "overlay",
        bridge_name: "otov1",
        managed: true,
        mtu: 1450,
        subnet: "10.99.0.0/24",
        gateway: null,
      }).spec,
      { type: "overlay", subnet: "10.99.0.0/24" },
    );
  });

  await t.step("rendered, the projections parse back into the same targets", () => {
    const vm = vmFixture();
    const net: NetworkManifest = projectNetwork({
      name: "n",
      type: "bridge",
      managed: false,
      bridge_name: "br0",
      mtu: null,
      subnet: null,
      gateway: null,
    });
    const text = renderManifests([net, projectVm(vm)]);
    assertEquals(text.split("\n---\n").length, 2);
    assertEquals(parse(text.split("---\n")[1]).kind, "VM");
    const docs: ManifestDoc[] = parseManifestText(text, "get.yaml");
    assertEquals(docs.map((d) => d.manifest), [net, projectVm(vm)]);
    assertEquals(networkTarget(docs[0] as ManifestDoc<NetworkManifest>).body, {
      name: "n",
      type: "bridge",
      managed: false,
      bridge_name: "br0",
    });
  });
});
