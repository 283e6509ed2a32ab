/**
 * The start-up fast path (issue 10): which invocations it serves, that it answers exactly as
 * the commander program does for them (output, errors, exit status), and that what it loads
 * holds no command-line library, zod, YAML or Node compatibility module — from source and in
 * the bundle `deno task compile` ships.
 */
import { assert, assertEquals } from "../assert.ts";
import { matchFastCommand } from "../../cli/fast_path.ts";
import { run } from "../../cli/main.ts";
import { runProgram } from "../../cli/program.ts";
import { bundleCli } from "../../scripts/compile.ts";
import { permissionFlags, STANDARD_SANDBOX } from "../../scripts/permissions.ts";
import { envelope, fakeIo, json, routesFetch, startFakeApi, vmFixture } from "./fixtures.ts";

Deno.test("fast path: serves plain vm list / vm get / __complete, leaves the rest", () => {
  const served = [
    ["vm", "list"],
    ["vm", "list", "--show-ids", "-o", "wide"],
    ["vm", "list", "-ojson", "--endpoint", "http://a,http://b"],
    ["--endpoint=http://a", "--token", "t", "vm", "list", "--output=text"],
    ["vm", "get", "demo", "-o", "table", "--request-timeout", "5s"],
    ["--config", "/c", "--cluster", "home", "vm", "get", "demo"],
    ["vm", "get", "-o", "json", "demo"],
    ["__complete", "vm"],
    ["__complete", "no-such-kind"],
  ];
  for (const argv of served) assert(matchFastCommand(argv), argv.join(" "));
  const g = matchFastCommand(["--endpoint=http://a", "vm", "get", "x", "--token=t"]);
  assertEquals(g, {
    command: "vm get",
    name: "x",
    format: "text",
    globals: { endpoint: "http://a", token: "t", requestTimeout: 30 },
  });
  const left = [
    [],
    ["vm"],
    ["vm", "list", "--help"],
    ["vm", "list", "-h"],
    ["vm", "list", "--watch"],
    ["vm", "list", "-w"],
    ["vm", "list", "-o", "yaml"],
    ["vm", "list", "-o", "bogus"],
    ["vm", "list", "-o"],
    ["vm", "list", "--show-ids=yes"],
    ["vm", "list", "extra"],
    ["vm", "--endpoint", "http://a", "list"],
    ["vm", "get"],
    ["vm", "get", "a", "b"],
    ["vm", "get", "a", "--show-ids"],
    ["vm", "get", "a", "-o", "yaml"],
    ["vm", "get", "--", "a"],
    ["vm", "list", "--request-timeout", "0"],
    ["vm", "list", "--request-timeout", "soon"],
    ["vm", "list", "--endpoint"],
    ["vm", "list", "--endpoint="],
    ["vm", "list", "--token", "--show-ids"],
    ["vm", "delete", "a"],
    ["node", "list"],
    ["__complete"],
    ["__complete", "vm", "-o", "json"],
  ];
  for (const argv of left) assertEquals(matchFastCommand(argv), undefined, argv.join(" "));
});

Deno.test("fast path: same output, errors and exit status as the commander program", async (t) => {
  const vms = [
    vmFixture(),
    vmFixture({ id: "00000000-0000-4000-8000-000000000002", name: "b-vm", status: "stopped" }),
  ];
  const fetch = routesFetch({
    "GET /v1/vms": () => json({ items: vms, next_cursor: null }),
    "GET /v1/vms/demo-vm": () => json(vms[0]),
    "GET /v1/vms/broken": () => json({ ...vms[0], vcpus: "two" }),
    "GET /v1/vms/*": () => envelope(404, "vm_not_found", 'vm "x" not found'),
  });
  const env = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };
  const cases: [string[], Record<string, string>][] = [
    [["vm", "list"], env],
    [["vm", "list", "--show-ids", "-o", "wide"], env],
    [["vm", "list", "-o", "json"], env],
    [["vm", "list", "-otext"], env],
    [["vm", "get", "demo-vm"], env],
    [["vm", "get", "demo-vm", "-o", "table"], env],
    [["vm", "get", "demo-vm", "--output=json"], env],
    [["vm", "get", "missing"], env],
    [["vm", "get", "broken"], env],
    [["vm", "get", ".."], env],
    [["vm", "list"], {}],
    [["vm", "list", "--endpoint", "cp.test"], { OTHERIX_API_TOKEN: "t" }],
    [["vm", "list", "--endpoint", "http://cp.test,,http://b"], { OTHERIX_API_TOKEN: "t" }],
    [["--endpoint", "http://cp.test", "--token", "otx_x", "vm", "list"], {}],
    [["__complete", "vm"], env],
    [["__complete", "vm"], {}],
    [["__complete", "no-such-kind"], env],
  ];
  for (const [argv, vars] of cases) {
    await t.step(
      `otherix ${argv.join(" ")}${Object.keys(vars).length ? "" : " (no env)"}`,
      async () => {
        assert(matchFastCommand(argv), "served by the fast path");
        const fast = fakeIo({ env: { ...vars, HOME: "/nonexistent" }, fetch });
        const slow = fakeIo({ env: { ...vars, HOME: "/nonexistent" }, fetch });
        const codes = [await run(argv, fast), await runProgram(argv, slow)];
        assertEquals(
          { code: codes[0], stdout: fast.stdout, stderr: fast.stderr },
          { code: codes[1], stdout: slow.stdout, stderr: slow.stderr },
        );
        assert(fast.stdout !== "" || fast.stderr !== "" || argv[0] === "__complete");
      },
    );
  }
});

/** Static imports (transitively) of `root`, as `deno info --json` reports them. */
async function staticGraph(root: string): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", root],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    redirects: Record<string, string>;
    modules: {
      specifier: string;
      dependencies?: { isDynamic?: boolean; code?: { specifier: string } }[];
    }[];
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const todo = [...info.roots];
  while (todo.length) {
    const s = todo.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of bySpecifier.get(s)?.dependencies ?? []) {
      if (d.isDynamic || !d.code) continue;
      todo.push(info.redirects[d.code.specifier] ?? d.code.specifier);
    }
  }
  return [...seen];
}

const HEAVY = /^npm:\/?(zod|yaml|commander)@|^node:|\/shared\/(api|errors)/;

Deno.test("fast path: from source, cli/main.ts loads no commander, zod, YAML or shared schema", async () => {
  const graph = await staticGraph(new URL("../../cli/main.ts", import.meta.url).href);
  assert(graph.some((s) => s.endsWith("/cli/vm_view.ts")), graph.join("\n"));
  assertEquals(graph.filter((s) => HEAVY.test(s)), []);
});

Deno.test("the shipped bundle: no Node compatibility module on the start-up path; it runs", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-bundle-" });
  const api = startFakeApi({
    "GET /v1/vms": () => json({ items: [vmFixture()], next_cursor: null }),
  });
  try {
    const entry = await bundleCli(`${dir}/bundle`);
    const chunk = async (name: string) => {
      const m = new RegExp(`import\\("\\./(${name}-[\\w-]+\\.js)"\\)`).exec(
        (await Array.fromAsync(Deno.readDir(`${dir}/bundle`)))
          .map((e) => Deno.readTextFileSync(`${dir}/bundle/${e.name}`)).join("\n"),
      );
      assert(m, `a dynamic import of ${name}`);
      return `${dir}/bundle/${m[1]}`;
    };
    await t.step("vm list / vm get load no node: or npm: module", async () => {
      const graph = await staticGraph(entry);
      assert(graph.length > 1, graph.join("\n"));
      assertEquals(graph.filter((s) => s.startsWith("node:") || s.startsWith("npm:")), []);
    });
    await t.step(
      "reading the config file loads YAML without Node's compatibility layer",
      async () => {
        const graph = await staticGraph(await chunk("yaml_text"));
        assertEquals(graph.filter((s) => s.startsWith("node:")), []);
      },
    );
    await t.step("the bundle runs: config file, fast path and the commander program", async () => {
      const home = `${dir}/home`;
      await Deno.mkdir(`${home}/.otherix`, { recursive: true });
      await Deno.writeTextFile(
        `${home}/.otherix/config`,
        `apiVersion: otherix/v1\nkind: Config\nclusters:\n  - name: c\n    server: ${api.url}\n` +
          "    token: otx_t\ncurrent-cluster: c\n",
      );
      const runBundle = async (args: string[]) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--no-config",
            ...permissionFlags("otherix", STANDARD_SANDBOX),
            entry,
            ...args,
          ],
          clearEnv: true,
          env: { HOME: home, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const dec = new TextDecoder();
        return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
      };
      const list = await runBundle(["vm", "list"]);
      assertEquals([list.code, list.stderr], [0, ""]);
      assertEquals(list.stdout.split("\n")[1].split(/ +/).slice(0, 2), ["demo-vm", "running"]);
      const yaml = await runBundle(["vm", "list", "-o", "yaml"]); // the commander program
      assertEquals([yaml.code, yaml.stderr], [0, ""]);
      assert(yaml.stdout.startsWith("items:\n  - id: "), yaml.stdout);
      assertEquals(api.seen.map((s) => s.auth), ["Bearer otx_t", "Bearer otx_t"]);
    });
  } finally {
    await api.close();
    await Deno.remove(dir, { recursive: true });
  }
});
