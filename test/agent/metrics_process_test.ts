/**
 * Agent metrics from the real `otherix-agent` process under its permission sandbox (no
 * `/proc`; `ps` from the run allowlist): a tiny VM created over the mTLS API, then scraped on
 * the optional plain-HTTP port (`metrics.listen`) and on the mTLS port, each read by the
 * official Prometheus parser.
 */
import { assert, assertEquals } from "../assert.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { startFakeCp } from "./fake_cp.ts";
import {
  killQemus,
  serveFiles,
  spawnSandboxedAgent,
  tinyRawImage,
  waitUntil,
  writeBootstrapFiles,
} from "./helpers.ts";
import { parsePrometheus, sampleValue } from "../prometheus.ts";

Deno.test("agent process: /metrics on the plain-HTTP port and the mTLS port", async () => {
  const root = await Deno.makeTempDir({ prefix: "otx-agentm-" });
  const cp = await startFakeCp();
  const http = serveFiles(new Map([["/img/tiny.img", await tinyRawImage()]]));
  const poolPath = `${root}/state/pools/default`;
  cp.desiredPools = [{ name: "default", path: poolPath }];
  for (const d of ["etc", "state", "run"]) await Deno.mkdir(`${root}/${d}`, { recursive: true });
  await Deno.writeTextFile(
    `${root}/etc/agent.yaml`,
    `paths:\n  config_dir: ${root}/etc\n  state_dir: ${root}/state\n  run_dir: ${root}/run\n` +
      `server:\n  listen: "127.0.0.1:0"\nheartbeat:\n  interval_seconds: 1\n` +
      `images:\n  url_policy: {allow_loopback: true}\nqemu:\n  accelerator: tcg\n` +
      `metrics:\n  listen: "127.0.0.1:0"\n`,
  );
  await writeBootstrapFiles(root, cp);
  const agent = spawnSandboxedAgent(root);
  const { child, reading } = agent;
  const portOf = (msg: string) => {
    const line = agent.output().split("\n").find((l) => l.includes(msg));
    return line ? String(JSON.parse(line).listen).split(":").pop() : undefined;
  };
  const client = createTlsClient({ caPem: cp.ca.certPem, ...await cp.cpClient() });
  try {
    await waitUntil(
      () => !!portOf("agent: serving plain-HTTP metrics") && !!portOf("agent: serving mTLS API"),
      60_000,
      `the agent's listen lines\n${agent.output()}`,
    );
    const plain = `http://127.0.0.1:${portOf("agent: serving plain-HTTP metrics")}`;
    const mtls = `https://127.0.0.1:${portOf("agent: serving mTLS API")}`;
    // Pools reconciled (first heartbeat), then a VM.
    await waitUntil(async () => (await Deno.stat(poolPath).catch(() => null)) !== null, 30_000);
    const id = crypto.randomUUID();
    const created = await fetch(`${mtls}/v1/vms`, {
      method: "POST",
      client,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        task_id: crypto.randomUUID(),
        vm: {
          id,
          name: "metered",
          image_url: `${http.base}/img/tiny.img`,
          architecture: "amd64",
          vcpus: 1,
          memory_mb: 128,
          disk_gib: 1,
        },
        pool: { name: "default", path: poolPath },
      }),
    });
    assertEquals(created.status, 202, await created.text());
    const labels = { vm: "metered", id };
    let families = new Map();
    await waitUntil(
      async () => {
        const res = await fetch(`${plain}/metrics`);
        assertEquals(res.status, 200);
        families = await parsePrometheus(await res.text());
        return (sampleValue(
          families,
          "otherix_vm_block_read_bytes",
          labels,
          "otherix_vm_block_read_bytes_total",
        ) ?? 0) > 0;
      },
      60_000,
      "block reads of the VM on the plain-HTTP port",
    );
    const rss = sampleValue(families, "otherix_vm_memory_bytes", labels)!;
    assert(rss > 10 * 1024 * 1024, `QEMU RSS ${rss}: ps ran inside the sandbox`);
    assert(
      sampleValue(families, "otherix_vm_cpu_seconds", labels, "otherix_vm_cpu_seconds_total")! >=
        0,
    );
    assertEquals((await fetch(`${plain}/other`)).status, 404);

    const viaMtls = await fetch(`${mtls}/metrics`, { client });
    assertEquals(viaMtls.status, 200);
    const f = await parsePrometheus(await viaMtls.text());
    assert(sampleValue(f, "otherix_vm_memory_bytes", labels)! > 0);
  } finally {
    client.close();
    child.kill("SIGTERM");
    await child.status;
    await reading;
    await killQemus(`${root}/run`);
    await http.server.shutdown();
    await cp.close();
    await Deno.remove(root, { recursive: true });
  }
});
