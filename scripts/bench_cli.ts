/**
 * CLI cold start (`deno task bench --only cli`, or `deno run -A --unstable-kv
 * scripts/bench_cli.ts [--n 15]`): end-to-end wall time of `otherix vm list` and `otherix vm
 * get NAME`, each a fresh process run the way the tests and `deno task otherix` run it (`deno
 * run` with the CLI's sandbox flags, scripts/permissions.ts), against a real control plane
 * (in-process, test/cp/fixtures.ts, one VM on a scripted agent), next to:
 *
 * - `virsh list` (Debian `libvirt-clients`), the reference: against libvirtd when it
 *   runs, else libvirt's in-process test driver (see {@link virshArgv}); skipped with a note
 *   when virsh is not installed;
 * - a `deno run` hello world: the floor any Deno CLI pays.
 *
 * Prints the median and p90 of `--n` runs (after one warm-up run each, so Deno's module and
 * code caches are filled as on a machine that ran the CLI before) and the ratios. Nothing is
 * asserted: it prints figures.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { denoRunArgs, STANDARD_SANDBOX } from "./permissions.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "../test/cp/fixtures.ts";

/** Wall times of `argv` run `n` times after one warm-up, milliseconds. */
async function time(argv: string[], n: number, env: Record<string, string> = {}) {
  const once = async () => {
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
  await once();
  const xs: number[] = [];
  for (let i = 0; i < n; i++) xs.push(await once());
  return xs.sort((a, b) => a - b);
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
    const env = {
      OTHERIX_SERVER: `http://127.0.0.1:${cp.publicPort}`,
      OTHERIX_API_TOKEN: token,
      NO_COLOR: "1",
    };
    const cli = (
      args: string[],
    ) => [Deno.execPath(), ...denoRunArgs("otherix", STANDARD_SANDBOX, args)];
    const hello = `${dir}/hello.ts`;
    await Deno.writeTextFile(hello, 'console.log("hello");\n');

    const rows: [string, number[]][] = [
      ["otherix vm list", await time(cli(["vm", "list"]), n, env)],
      ["otherix vm get bench-vm", await time(cli(["vm", "get", "bench-vm"]), n, env)],
      ["deno run hello.ts (floor)", await time([Deno.execPath(), "run", hello], n)],
    ];
    if (virsh) rows.push([virsh.label, await time(virsh.argv, n)]);
    const reference = rows.find(([k]) => k.startsWith("virsh"))?.[1];
    const floor = rows.find(([k]) => k.startsWith("deno run"))![1];
    console.log(`CLI cold start (${n} runs each, after a warm-up; ms)`);
    for (const [name, xs] of rows) {
      const ratios = [
        reference ? `${(median(xs) / median(reference)).toFixed(1)}× virsh` : "",
        `${(median(xs) / median(floor)).toFixed(1)}× floor`,
      ].filter(Boolean).join(", ");
      console.log(
        `  ${name.padEnd(28)} p50 ${median(xs).toFixed(0).padStart(5)}  p90 ${
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
