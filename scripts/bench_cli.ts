/**
 * CLI cold start (`deno task bench --only cli`, or `deno run -A --unstable-kv
 * scripts/bench_cli.ts [--n 15]`): end-to-end wall time of `otherix vm list` and `otherix vm
 * get NAME`, each a fresh process, against a real control plane (in-process,
 * test/cp/fixtures.ts, one VM on a scripted agent), run two ways:
 *
 * - `bundle`: what `deno task compile` ships (scripts/compile.ts `bundleCli`: the code-split
 *   bundle `deno compile` embeds), run with `deno run --no-config` and the CLI's sandbox flags
 *   (scripts/permissions.ts). The compiled binary itself cannot be timed on a machine without
 *   `denort` (DESIGN.md); this is the same code under the same flags;
 * - `source`: `cli/main.ts` from source, as the tests and `deno task otherix` run it;
 *
 * with the endpoint and token from the environment, plus `vm list` reading them from a config
 * file (which loads the YAML library). Next to:
 *
 * - `virsh list` (Debian `libvirt-clients`), the reference: against libvirtd when it
 *   runs, else libvirt's in-process test driver (see {@link virshArgv}); skipped with a note
 *   when virsh is not installed;
 * - a `deno run` hello world: the floor any Deno CLI pays;
 * - where the rest goes: the bundle loading its start-up modules without a request
 *   (`__complete` of an unknown kind prints nothing and sends nothing), and a script that only
 *   sends the same `GET /v1/vms` with `fetch` (Deno's HTTP client and the server's answer).
 *
 * Prints the median and p90 of `--n` runs (after one warm-up run each, so Deno's module and
 * code caches are filled as on a machine that ran the CLI before) and the ratios. Nothing is
 * asserted: it prints figures.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { bundleCli } from "./compile.ts";
import { denoRunArgs, permissionFlags, STANDARD_SANDBOX } from "./permissions.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "../test/cp/fixtures.ts";

/** One command to time: its argv and extra env. */
interface Timed {
  argv: string[];
  env?: Record<string, string>;
}

/**
 * Wall times of each command run `n` times after one warm-up each, milliseconds, sorted. The
 * runs are interleaved (round-robin over the commands), so a change in the machine's load
 * during the bench weighs on every command alike.
 */
async function timeAll(commands: Timed[], n: number): Promise<number[][]> {
  const once = async ({ argv, env = {} }: Timed) => {
    const t = performance.now();
    const out = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const ms = performance.now() - t;
    if (!out.success) {
      throw new Error(`${argv.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return ms;
  };
  for (const c of commands) await once(c);
  const xs = commands.map(() => [] as number[]);
  for (let i = 0; i < n; i++) {
    for (const [j, c] of commands.entries()) xs[j].push(await once(c));
  }
  return xs.map((x) => x.sort((a, b) => a - b));
}

function median(xs: number[]): number {
  return xs[Math.floor(xs.length / 2)];
}

function p90(xs: number[]): number {
  return xs[Math.min(xs.length - 1, Math.ceil(0.9 * xs.length) - 1)];
}

/**
 * How to time `virsh list`: against the running libvirtd (`qemu:///system`) when its socket
 * exists, else libvirt's in-process `test:///default` driver (the client's own start-up, no
 * daemon round trip: libvirtd cannot start here, its QEMU driver wants the `libvirt-qemu`
 * user of libvirt-daemon-system); null when virsh is not installed.
 */
async function virshArgv(): Promise<{ argv: string[]; label: string } | null> {
  const has = new Deno.Command("sh", { args: ["-c", "command -v virsh"], stdout: "null" })
    .outputSync().success;
  if (!has) return null;
  const daemon = await Deno.stat("/var/run/libvirt/libvirt-sock").then(() => true, () => false);
  return daemon
    ? { argv: ["virsh", "list"], label: "virsh list (libvirtd)" }
    : { argv: ["virsh", "-c", "test:///default", "list"], label: "virsh list (test driver)" };
}

/** Runs the CLI start-up bench and prints its table. */
export async function benchCli(n: number): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-bench-cli-" });
  const cp = await startTestCp(dir, new LogCapture());
  const agent = new FakeAgent(cp, "node-a");
  const virsh = await virshArgv();
  try {
    await agent.bootstrap();
    await agent.heartbeat();
    const api = await apiFor(cp);
    const created = await api("POST", "/v1/vms", {
      name: "bench-vm",
      image_url: "http://127.0.0.1:1/images/img.raw",
      architecture: "amd64",
      vcpus: 1,
      memory_mb: 256,
      disk_gib: 1,
    });
    if (created.status !== 202) throw new Error(created.text);
    await until(
      "bench-vm running",
      async () => (await api("GET", "/v1/vms/bench-vm")).json.status === "running",
    );
    const login = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "admin@example.com", password: "admin-password" }),
    });
    const token = (await login.json()).access_token as string;
    const server = `http://127.0.0.1:${cp.publicPort}`;
    const env = { OTHERIX_SERVER: server, OTHERIX_API_TOKEN: token, NO_COLOR: "1" };
    const home = `${dir}/home`;
    await Deno.mkdir(`${home}/.otherix`, { recursive: true });
    await Deno.writeTextFile(
      `${home}/.otherix/config`,
      `apiVersion: otherix/v1\nkind: Config\nclusters:\n  - name: bench\n    server: ${server}\n` +
        `    token: ${token}\ncurrent-cluster: bench\n`,
    );
    const bundle = await bundleCli(`${dir}/bundle`);
    const deno = Deno.execPath();
    const flags = permissionFlags("otherix", STANDARD_SANDBOX);
    const bundled = (args: string[]) => [deno, "run", "--no-config", ...flags, bundle, ...args];
    const source = (args: string[]) => [deno, ...denoRunArgs("otherix", STANDARD_SANDBOX, args)];
    const hello = `${dir}/hello.js`;
    await Deno.writeTextFile(hello, 'console.log("hello");\n');
    const fetchOnly = `${dir}/fetch_only.js`;
    await Deno.writeTextFile(
      fetchOnly,
      "const r = await fetch(Deno.env.get('OTHERIX_SERVER') + '/v1/vms', { headers: {" +
        " authorization: 'Bearer ' + Deno.env.get('OTHERIX_API_TOKEN') } });\n" +
        "console.log((await r.json()).items.length);\n",
    );

    const configEnv = { HOME: home, NO_COLOR: "1" };
    const commands: [string, Timed][] = [
      ["vm list (bundle)", { argv: bundled(["vm", "list"]), env }],
      ["vm get bench-vm (bundle)", { argv: bundled(["vm", "get", "bench-vm"]), env }],
      ["vm list (bundle, config file)", { argv: bundled(["vm", "list"]), env: configEnv }],
      ["vm list (source)", { argv: source(["vm", "list"]), env }],
      ["vm get bench-vm (source)", { argv: source(["vm", "get", "bench-vm"]), env }],
      ["deno run hello.js (floor)", { argv: [deno, "run", "--no-config", hello] }],
      ["  floor + start-up modules", { argv: bundled(["__complete", "no-such-kind"]), env }],
      ["  floor + one fetch", { argv: [deno, "run", "--no-config", ...flags, fetchOnly], env }],
    ];
    if (virsh) commands.push([virsh.label, { argv: virsh.argv }]);
    const times = await timeAll(commands.map(([, c]) => c), n);
    const rows = commands.map(([name], i): [string, number[]] => [name, times[i]]);
    const reference = rows.find(([k]) => k.startsWith("virsh"))?.[1];
    const floor = rows.find(([k]) => k.startsWith("deno run"))![1];
    console.log(
      `CLI cold start (${n} runs each, after a warm-up; ms). bundle = what deno compile ships,` +
        " run with deno run --no-config and the CLI's sandbox flags",
    );
    for (const [name, xs] of rows) {
      const ratios = [
        reference ? `${(median(xs) / median(reference)).toFixed(1)}× virsh` : "",
        `${(median(xs) / median(floor)).toFixed(1)}× floor`,
      ].filter(Boolean).join(", ");
      console.log(
        `  ${name.padEnd(30)} p50 ${median(xs).toFixed(0).padStart(5)}  p90 ${
          p90(xs).toFixed(0).padStart(5)
        }   ${ratios}`,
      );
    }
    if (!virsh) console.log("  virsh list: libvirt-clients not installed");
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { n: { type: "string", default: "15" } },
  });
  await benchCli(Math.max(1, Number(values.n)));
}
