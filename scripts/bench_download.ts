/**
 * First-download throughput for `deno task bench --only download` (issue 7): the agent's
 * image cache (`ImageCache.ensure`, agent/images.ts: fetch, SHA-256, write, fsync, publish)
 * against the same work done by standard tools,
 * `curl -s URL | tee FILE | openssl dgst -sha256` followed by `sync`, on one file served
 * from loopback by a separate process (`python3 -m http.server` when python3 is installed,
 * else scripts/serve_images.ts).
 *
 * Each side runs `runs` times, alternating (agent, pipeline, agent, …) so both see the same
 * machine load; before each run its previous output is removed (the agent's cache emptied)
 * and `sync` flushes other dirty data. Both write into one temp directory, so the same
 * filesystem. The best run of each is compared (ratio = agent / pipeline; the goal is
 * ≤ 1.0). Needs `curl`, `tee`, `openssl`, `sync` (Debian: curl, coreutils, openssl).
 *
 * Standalone: `deno run --allow-all scripts/bench_download.ts [--mib 1024] [--runs 3]`.
 *
 * @module
 */
import { randomFillSync } from "node:crypto";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ImageCache } from "../agent/images.ts";
import { REPO_ROOT } from "./permissions.ts";

/** One download benchmark's figures (seconds; best of `runs`). */
export interface DownloadBenchResult {
  sizeBytes: number;
  runs: number;
  /** The agent's `ensure()` per run, s. */
  agentS: number[];
  /** `curl | tee | openssl` + `sync` per run, s. */
  pipelineS: number[];
  /** Best agent run / best pipeline run. */
  ratio: number;
  /** How the file was served. */
  server: string;
}

/** Options of {@link benchDownload}. */
export interface DownloadBenchOptions {
  /** File size, bytes (default 1 GiB). */
  sizeBytes?: number;
  /** Runs per side (default 3). */
  runs?: number;
  /** Progress messages (default: stderr). */
  log?: (line: string) => void;
}

/** Runs `cmd args…`, returning stdout; throws with stderr on failure. */
async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

async function has(cmd: string): Promise<boolean> {
  try {
    await run("sh", ["-c", `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

/** Writes `size` random bytes to `path` (16 MiB at a time). */
async function writeRandomFile(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const buf = new Uint8Array(16 * 1024 * 1024);
    for (let left = size; left > 0; left -= buf.length) {
      const chunk = buf.subarray(0, Math.min(buf.length, left));
      randomFillSync(chunk);
      for (let off = 0; off < chunk.length;) off += await f.write(chunk.subarray(off));
    }
  } finally {
    f.close();
  }
}

/** A loopback static server for `dir` in its own process; resolves once it answers. */
async function startServer(
  dir: string,
): Promise<{ base: string; kind: string; stop(): Promise<void> }> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const python = await has("python3");
  const child = python
    ? new Deno.Command("python3", {
      args: ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", dir],
      stdout: "null",
      stderr: "null",
    }).spawn()
    : new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        `--allow-read=${dir}`,
        join(REPO_ROOT, "scripts/serve_images.ts"),
        dir,
        String(port),
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const res = await fetch(`${base}/ready.txt`);
      await res.body?.cancel();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill();
      throw new Error("the download bench's file server did not start");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base,
    kind: python ? "python3 -m http.server" : "scripts/serve_images.ts",
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/**
 * Serves a random file of `sizeBytes` on loopback and times both sides (see the module doc).
 *
 * @throws Error when a tool is missing or a run fails (e.g. a digest differs)
 */
export async function benchDownload(o: DownloadBenchOptions = {}): Promise<DownloadBenchResult> {
  const size = o.sizeBytes ?? 1024 ** 3;
  const runs = Math.max(1, o.runs ?? 3);
  const log = o.log ?? ((l: string) => console.error(l));
  for (const tool of ["curl", "tee", "openssl", "sync"]) {
    if (!await has(tool)) throw new Error(`bench download needs ${tool}`);
  }
  const dir = await Deno.makeTempDir({ prefix: "otx-bench-dl-" });
  const served = join(dir, "served");
  const pool = join(dir, "pool");
  const out = join(dir, "pipeline.img");
  await Deno.mkdir(served);
  await Deno.writeTextFile(join(served, "ready.txt"), "ok\n");
  log(`>> bench download: writing a ${size} byte file`);
  await writeRandomFile(join(served, "disk.img"), size);
  const want = (await run("openssl", ["dgst", "-sha256", "-r", join(served, "disk.img")]))
    .split(" ")[0];
  await run("sync", []);
  const server = await startServer(served);
  const url = `${server.base}/disk.img`;
  const agentS: number[] = [];
  const pipelineS: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      await Deno.remove(join(pool, "images"), { recursive: true }).catch(() => {});
      await run("sync", []);
      const cache = new ImageCache({ idleTimeoutMs: 60_000 });
      let t0 = performance.now();
      const img = await cache.ensure({ poolPath: pool, url });
      agentS.push((performance.now() - t0) / 1000);
      if (img.sha256 !== want || img.cacheHit) throw new Error("agent download: wrong result");

      await Deno.remove(out).catch(() => {});
      await run("sync", []);
      t0 = performance.now();
      const digest = await run("bash", [
        "-c",
        'set -o pipefail; curl -sf "$1" | tee "$2" | openssl dgst -sha256 -r && sync',
        "bench",
        url,
        out,
      ]);
      pipelineS.push((performance.now() - t0) / 1000);
      if (digest.split(" ")[0] !== want) throw new Error("pipeline download: wrong digest");
      log(
        `>> bench download run ${i + 1}/${runs}: agent ${agentS[i].toFixed(2)} s, ` +
          `pipeline ${pipelineS[i].toFixed(2)} s`,
      );
    }
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return {
    sizeBytes: size,
    runs,
    agentS,
    pipelineS,
    ratio: Math.min(...agentS) / Math.min(...pipelineS),
    server: server.kind,
  };
}

/** Prints a {@link DownloadBenchResult} as the bench's table. */
export function printDownloadBench(r: DownloadBenchResult): void {
  const mib = r.sizeBytes / 1024 ** 2;
  const row = (name: string, xs: number[]) => {
    const best = Math.min(...xs);
    console.log(
      `${name.padEnd(50)}  ${best.toFixed(2).padStart(6)}  ${
        (mib / best).toFixed(0).padStart(6)
      }  ${xs.map((x) => x.toFixed(2)).join(" ")}`,
    );
  };
  console.log(
    `\nfirst download of ${mib.toFixed(0)} MiB from loopback (${r.server}), best of ${r.runs}`,
  );
  console.log(`${"".padEnd(50)}  ${"best_s".padStart(6)}  ${"MiB/s".padStart(6)}  all runs (s)`);
  row("agent ImageCache.ensure (fetch+sha256+write+fsync)", r.agentS);
  row("curl | tee | openssl dgst -sha256 ; sync", r.pipelineS);
  console.log(`ratio agent / pipeline: ${r.ratio.toFixed(2)} (goal ≤ 1.0; issue 7 measured 1.22)`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { mib: { type: "string", default: "1024" }, runs: { type: "string", default: "3" } },
  });
  printDownloadBench(
    await benchDownload({
      sizeBytes: Number(values.mib) * 1024 * 1024,
      runs: Number(values.runs),
    }),
  );
}
