/**
 * An image download end to end (real otherix-api, otherix-agent, QEMU and CLI processes):
 * the agent's byte progress reaches the control-plane task (`progress_bytes`), and
 * `otherix vm create --wait` shows it as plain lines (at most one per 10 %) on a pipe and as
 * a progress bar on a real terminal (`script` from bsdutils allocates the pty). The image is a
 * blank raw disk served at a steady pace by the test (QEMU then runs firmware only).
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { denoRunArgs, REPO_ROOT } from "../../scripts/permissions.ts";
import { baseEnv, runCli, waitFor } from "../harness.ts";
import { type Cluster, type Json, startCluster } from "./cluster.ts";

const MiB = 1024 * 1024;
const SIZE = 24 * MiB;

/** Serves SIZE zero bytes at any path, 1 MiB per 100 ms (a ~2.4 s download). */
function pacedServer() {
  const image = new Uint8Array(SIZE);
  let stopped = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    let off = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (stopped || off >= SIZE) return c.close();
        await new Promise((r) => setTimeout(r, 100));
        c.enqueue(image.slice(off, off + MiB));
        off += MiB;
      },
    });
    return new Response(body, { headers: { "content-length": String(SIZE) } });
  });
  return {
    url: (name: string) => `http://127.0.0.1:${server.addr.port}/${name}`,
    async close() {
      stopped = true;
      await server.shutdown();
    },
  };
}

function cliEnv(c: Cluster, home: string): Record<string, string> {
  return { HOME: home, OTHERIX_SERVER: c.api.url, OTHERIX_API_TOKEN: c.token, NO_COLOR: "1" };
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

Deno.test("e2e: image download progress reaches the task and `vm create --wait`", async (t) => {
  const c = await startCluster({ prefix: "otx-dl" });
  const images = pacedServer();
  const home = await Deno.makeTempDir({ prefix: "otx-dl-home-" });
  const create = (name: string) => [
    "vm",
    "create",
    name,
    "--image-url",
    images.url(`${name}.raw`), // a new URL each: a new download
    "--memory-mb",
    "64",
    "--wait",
  ];
  try {
    await t.step("piped: a line per 10 %; the task carried byte figures meanwhile", async () => {
      const seen: Json[] = [];
      let stop = false;
      const watch = (async () => {
        while (!stop) {
          const id = (await c.call("GET", "/v1/vms/dl-plain")).json?.last_task?.id;
          const task = id ? (await c.call("GET", `/v1/tasks/${id}`)).json : null;
          if (task?.progress_bytes) seen.push(task.progress_bytes);
          await new Promise((r) => setTimeout(r, 200));
        }
      })();
      const r = await runCli(create("dl-plain"), cliEnv(c, home));
      stop = true;
      await watch;
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stdout, /vm running task=\S+/);
      assertMatch(r.stderr, /task=\S+ status=running: downloading image\n/);
      const lines = r.stderr.split("\n").filter((l) => l.startsWith("downloading image: "));
      assert(lines.length >= 2 && lines.length <= 11, r.stderr);
      const pcts = lines.map((l) => {
        const m = /^downloading image: [\d.]+ (?:B|KiB|MiB) of 24\.0 MiB \((\d+)%\)$/.exec(l);
        assert(m, `unexpected line: ${l}`);
        return Number(m[1]);
      });
      for (let i = 1; i < pcts.length; i++) {
        assert(Math.floor(pcts[i] / 10) > Math.floor(pcts[i - 1] / 10), pcts.join(","));
      }
      // The control plane's task had the agent's figures while the download ran.
      assert(seen.length > 0, "no progress_bytes seen on the control plane's tasks");
      assert(seen.every((p) => p.total_bytes === SIZE && p.done_bytes <= SIZE));
      const vm = (await c.call("GET", "/v1/vms/dl-plain")).json;
      assertEquals([vm.image, vm.image_format], ["dl-plain.raw", "raw"]);
      const done = (await c.call("GET", `/v1/tasks/${vm.last_task.id}`)).json;
      assertEquals([done.status, done.progress_bytes], ["succeeded", null]);
    });

    await t.step("on a terminal: a cli-progress bar", async () => {
      const argv = [
        Deno.execPath(),
        ...denoRunArgs("otherix", { config: "/", state: "/", run: "/" }, create("dl-tty")),
      ];
      const out = await new Deno.Command("script", {
        args: ["-qfec", argv.map(shellQuote).join(" "), "/dev/null"],
        cwd: REPO_ROOT,
        env: { ...baseEnv(), ...cliEnv(c, home), TERM: "xterm" },
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assertEquals(out.code, 0, text);
      assertMatch(text, /downloading image \[[█░]{24}\] \d+% \| [\d.]+ \S+ of 24\.0 MiB/);
      assertStringIncludes(text, "downloading image [████████████████████████] 100%");
      assertMatch(text, /vm running task=\S+/);
      assert(!/^downloading image: /m.test(text), "no plain lines on a terminal");
    });

    for (const name of ["dl-plain", "dl-tty"]) {
      const del = await c.call("DELETE", `/v1/vms/${name}`);
      await c.waitTask(del.json.id);
    }
    await waitFor(
      "the VMs' QEMUs to exit",
      () => Promise.resolve(c.qemuPids("dl-").length === 0 || null),
      30_000,
      100,
    );
  } finally {
    await images.close();
    await c.close();
    await Deno.remove(home, { recursive: true });
  }
});
