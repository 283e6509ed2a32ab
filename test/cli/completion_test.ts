/**
 * `otherix completion bash|zsh|fish`: the scripts the real CLI prints, loaded into the real
 * shells (bash `complete -p` / the completion function with `COMP_WORDS`, fish `complete -C`,
 * zsh through `bashcompinit`), completing commands, flags, flag values and live resource
 * names from an API server (the real CLI on PATH as `otherix`).
 */
import { assert, assertEquals } from "../assert.ts";
import { buildProgram } from "../../cli/program.ts";
import { completionTree } from "../../cli/completion/tree.ts";
import { denoRunArgs, STANDARD_SANDBOX } from "../../scripts/permissions.ts";
import { closedPort, fakeIo, json, runCli, startFakeApi, vmFixture } from "./fixtures.ts";

/** Whether `shell` is installed (zsh and fish come from scripts/setup.sh's test extras). */
function has(shell: string): boolean {
  try {
    return new Deno.Command(shell, { args: ["-c", "exit 0"] }).outputSync().success;
  } catch {
    return false;
  }
}

/** A temp dir holding `bin/otherix` (the real CLI) and the three scripts. */
async function setup(home: string) {
  const bin = `${home}/bin`;
  await Deno.mkdir(bin, { recursive: true });
  const args = denoRunArgs("otherix", STANDARD_SANDBOX, []).map((a) => `'${a}'`).join(" ");
  await Deno.writeTextFile(
    `${bin}/otherix`,
    `#!/bin/sh\nexec '${Deno.execPath()}' ${args} "$@"\n`,
    { mode: 0o755 },
  );
  const scripts: Record<string, string> = {};
  for (const shell of ["bash", "zsh", "fish"]) {
    const r = await runCli(["completion", shell], { home });
    assertEquals(r.code, 0, r.stderr);
    scripts[shell] = `${home}/otherix.${shell}`;
    await Deno.writeTextFile(scripts[shell], r.stdout);
  }
  return { bin, scripts };
}

/** Runs `script` in `shell` with PATH led by `bin` and the API at `server`. */
async function sh(shell: string, script: string, bin: string, home: string, server: string) {
  const out = await new Deno.Command(shell, {
    args: ["-c", script],
    clearEnv: true,
    env: {
      HOME: home,
      PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`,
      DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
      DENO_NO_UPDATE_CHECK: "1",
      OTHERIX_SERVER: server,
      OTHERIX_API_TOKEN: "otx_test",
    },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** bash: sourcing the script, then one `complete_line WORDS…` per case, prints `[words] -> …`. */
const BASH_DRIVER = (file: string, cases: string[][]) =>
  `source '${file}'\ncomplete -p otherix\n` +
  `t() { COMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]}-1)); COMPREPLY=(); _otherix; ` +
  `echo "\${COMPREPLY[*]}"; }\n` +
  cases.map((c) => `t ${c.map((w) => `'${w}'`).join(" ")}`).join("\n") + "\n";

Deno.test("completion tree: read from the command definitions", async () => {
  const program = await buildProgram(fakeIo());
  const tree = completionTree(program);
  const at = (path: string) => tree.find((n) => n.path === path)!;
  assert(at("").subcommands.includes("vm") && at("").subcommands.includes("doctor"));
  assert(!at("").subcommands.includes("__complete"), "the helper is hidden");
  assertEquals(at("vm get").argument, { kind: "resource", resource: "vm" });
  assertEquals(at("vm create").argument, { kind: "none" }, "a new name");
  assertEquals(at("vm create").values["--node"], { kind: "resource", resource: "node" });
  assertEquals(at("node get").argument, { kind: "resource", resource: "node" });
  assertEquals(at("vm list").values["-o"].kind, "words");
  assert(at("vm list").flags.includes("--endpoint"), "global flags everywhere");
});

Deno.test("completion scripts in the real shells", async (t) => {
  const home = await Deno.makeTempDir({ prefix: "otx-compl-" });
  const api = startFakeApi({
    "GET /v1/vms": () =>
      json({
        items: [vmFixture({ name: "web-1" }), vmFixture({ name: "db-1" })],
        next_cursor: null,
      }),
    "GET /v1/nodes": () => json({ items: [{ name: "node-a" }], next_cursor: null }),
  });
  try {
    const { bin, scripts } = await setup(home);

    await t.step("bash: registered with complete -F; commands, flags, values, names", async () => {
      const r = await sh(
        "bash",
        BASH_DRIVER(scripts.bash, [
          ["otherix", "vm", "l"],
          ["otherix", "vm", "list", "-o", ""],
          ["otherix", "--endpoint", "http://x", "vm", "g"],
          ["otherix", "vm", "get", ""],
          ["otherix", "vm", "get", "w"],
          ["otherix", "vm", "get", "web-1", ""],
          ["otherix", "vm", "create", "x", "--node", ""],
          ["otherix", "doctor", "--n"],
        ]),
        bin,
        home,
        api.url,
      );
      assertEquals(r.stderr, "");
      assertEquals(r.stdout.split("\n"), [
        "complete -F _otherix otherix",
        "list logs",
        "table wide text json yaml",
        "get",
        "db-1 web-1",
        "web-1",
        "",
        "node-a",
        "--node",
        "",
      ]);
    });

    await t.step("bash: API down → no names, no noise, within the timeout", async () => {
      const started = Date.now();
      const r = await sh(
        "bash",
        BASH_DRIVER(scripts.bash, [["otherix", "vm", "get", ""]]),
        bin,
        home,
        `http://127.0.0.1:${closedPort()}`,
      );
      assertEquals([r.stdout, r.stderr], ["complete -F _otherix otherix\n\n", ""]);
      assert(Date.now() - started < 10_000);
    });

    await t.step({
      name: "fish: complete -C",
      ignore: !has("fish"),
      fn: async () => {
        const r = await sh(
          "fish",
          `source '${scripts.fish}'\n` +
            `complete -C 'otherix vm l'; echo ==\n` +
            `complete -C 'otherix vm list --output '; echo ==\n` +
            `complete -C 'otherix vm get '`,
          bin,
          home,
          api.url,
        );
        assertEquals(r.stderr, "");
        assertEquals(r.stdout.split("==\n").map((s) => s.trim().split("\n").sort()), [
          ["list", "logs"],
          ["json", "table", "text", "wide", "yaml"],
          ["db-1", "web-1"],
        ]);
      },
    });

    await t.step({
      name: "zsh: bashcompinit registers it; the functions run under zsh",
      ignore: !has("zsh"),
      fn: async () => {
        // What bashcompinit's _bash_complete does on Tab: ksharrays, COMP_WORDS, COMP_CWORD.
        const r = await sh(
          "zsh",
          `source '${scripts.zsh}'\necho "$_comps[otherix]"\nsetopt ksharrays\n` +
            `COMP_WORDS=(otherix vm list -o ''); COMP_CWORD=4; _otherix; echo "\${COMPREPLY[*]}"\n` +
            `COMP_WORDS=(otherix vm get ''); COMP_CWORD=3; _otherix; echo "\${COMPREPLY[*]}"\n`,
          bin,
          home,
          api.url,
        );
        assertEquals(r.stderr, "");
        assertEquals(r.stdout.split("\n"), [
          "_bash_complete -F _otherix",
          "table wide text json yaml",
          "db-1 web-1",
          "",
        ]);
      },
    });

    await t.step("unknown shell: usage error", async () => {
      const r = await runCli(["completion", "tcsh"], { home });
      assertEquals(r.code, 1);
      assert(r.stderr.includes(`unknown shell "tcsh"`), r.stderr);
    });
  } finally {
    await api.close();
    await Deno.remove(home, { recursive: true });
  }
});
