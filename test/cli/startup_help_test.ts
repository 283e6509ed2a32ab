/**
 * The CLI's start-up and help rules: a command loads only its own group; every command's
 * `--help` ends with an example; no output carries colour codes (so `NO_COLOR` has nothing to
 * turn off).
 */
import { assert, assertEquals, assertMatch } from "../assert.ts";
import type { Command } from "commander";
import { run } from "../../cli/main.ts";
import { buildProgram, invokedGroup } from "../../cli/program.ts";
import { fakeIo, json, NOW, routesFetch, uuid } from "./fixtures.ts";

Deno.test("start-up: the invoked group is found past root options and their values", () => {
  assertEquals(invokedGroup(["vm", "list"]), "vm");
  assertEquals(invokedGroup(["--endpoint", "http://x", "--token", "t", "vm", "get", "a"]), "vm");
  assertEquals(invokedGroup(["--request-timeout", "5s", "node", "list"]), "node");
  assertEquals(invokedGroup(["--endpoint=http://x", "pool", "list"]), "pool");
  assertEquals(invokedGroup(["--help"]), undefined);
  assertEquals(invokedGroup([]), undefined);
});

Deno.test("start-up: `vm …` builds only the vm group; help and unknown words build all", async () => {
  const names = (p: Command) => p.commands.map((c) => c.name());
  assertEquals(names(await buildProgram(fakeIo(), "vm")), ["vm"]);
  const all = names(await buildProgram(fakeIo()));
  for (const g of ["config", "node", "vm", "pool", "doctor", "completion", "whoami"]) {
    assert(all.includes(g), `${g} in ${all}`);
  }
  const io = fakeIo();
  assertEquals(await run(["vmm", "list"], io), 1);
  assertMatch(io.stderr, /unknown command 'vmm'/);
  assertMatch(io.stderr, /\(Did you mean vm\?\)/);
});

Deno.test("help: every command's --help ends with an example, without colour", async (t) => {
  const program = await buildProgram(fakeIo());
  const paths: string[][] = [[]];
  const walk = (c: Command, path: string[]) => {
    for (const s of c.commands) {
      if (s.name().startsWith("__")) continue;
      paths.push([...path, s.name()]);
      walk(s, [...path, s.name()]);
    }
  };
  walk(program, []);
  assert(paths.length > 60, `${paths.length} commands`);
  for (const path of paths) {
    await t.step(`otherix ${path.join(" ")} --help`.trim(), async () => {
      const io = fakeIo({ env: { NO_COLOR: "1" } });
      assertEquals(await run([...path, "--help"], io), 0);
      const last = io.stdout.trimEnd().split("\n");
      const at = last.lastIndexOf("Examples:");
      assert(at > 0, `no Examples: block in\n${io.stdout}`);
      const examples = last.slice(at + 1);
      assert(examples.length > 0 && examples.every((l) => l.startsWith("  otherix ")));
      assert(
        examples.some((l) => l.startsWith(`  otherix ${path.join(" ")}`.trimEnd())),
        `an example of the command itself: ${examples}`,
      );
      assert(!io.stdout.includes("\x1b["), "no ANSI escapes");
    });
  }
});

Deno.test("-o wide: offered by every list command", async () => {
  const program = await buildProgram(fakeIo());
  const lists: string[][] = [];
  const walk = (c: Command, path: string[]) => {
    for (const s of c.commands) {
      if (s.name() === "list") lists.push([...path, "list"]);
      walk(s, [...path, s.name()]);
    }
  };
  walk(program, []);
  assert(lists.length >= 9, `${lists.map((l) => l.join(" "))}`);
  for (const path of lists) {
    const io = fakeIo();
    assertEquals(await run([...path, "--help"], io), 0);
    assertMatch(io.stdout, /-o, --output <format>[^]*"wide"/, `${path.join(" ")}`);
  }
});

Deno.test("-o wide: pool list adds TOTAL, IMAGES, VM_DISKS; network list GATEWAY, MTU", async () => {
  const pool = {
    id: uuid(20),
    name: "default",
    node: "node-a",
    type: "local_dir",
    path: "/p/default",
    status: "ready",
    message: null,
    total_bytes: 100 * 1024 ** 3,
    available_bytes: 80 * 1024 ** 3,
    images: [],
    images_total: 3,
    is_default: true,
    effective_available_bytes: 80 * 1024 ** 3,
    pending_vm_disk_bytes: 0,
    pressure: null,
    last_scan: null,
    last_scan_error: null,
    created_at: new Date(NOW - 86400_000).toISOString(),
    updated_at: new Date(NOW).toISOString(),
  };
  const network = {
    id: uuid(30),
    name: "lan",
    type: "bridge",
    managed: true,
    bridge_name: "oxb-lan",
    mtu: 1450,
    subnet: "10.20.0.0/24",
    gateway: "10.20.0.1",
    vni: null,
    attached_vms: 2,
    addresses: { total: 253, used: 2 },
    created_at: new Date(NOW - 86400_000).toISOString(),
    updated_at: new Date(NOW).toISOString(),
  };
  const io = fakeIo({
    env: { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" },
    fetch: routesFetch({
      "GET /v1/pools": () => json({ items: [pool], next_cursor: null }),
      "GET /v1/networks": () => json({ items: [network], next_cursor: null }),
    }),
  });
  assertEquals(await run(["pool", "list", "-o", "wide"], io), 0, io.stderr);
  const [head, row] = io.stdout.trimEnd().split("\n");
  assertMatch(head, /AGE +TOTAL +IMAGES +VM_DISKS$/);
  assertMatch(row, /100\.0GiB +3 +-$/);
  io.stdout = "";
  assertEquals(await run(["network", "list", "-o", "wide"], io), 0, io.stderr);
  const [nhead, nrow] = io.stdout.trimEnd().split("\n");
  assertMatch(nhead, /AGE +GATEWAY +MTU$/);
  assertMatch(nrow, /10\.20\.0\.1 +1450$/);
});
