/**
 * Agent metrics (agent/metrics.ts): a real tiny VM (QEMU, TCG) under a real VmManager, the
 * agent's HTTP app on its mTLS server, scraped with a control-plane certificate and read by
 * the official Prometheus parser (test/prometheus.ts). The figures are checked against what
 * `ps` says about the same QEMU process independently.
 */
import { assert, assertEquals } from "../assert.ts";
import { agentPaths, parseAgentConfig } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { AgentMetrics, parseIpLinkStats, parsePsOutput } from "../../agent/metrics.ts";
import { PoolManager } from "../../agent/pools.ts";
import { createAgentApp, startAgentServer } from "../../agent/server.ts";
import { TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { type Family, parsePrometheus, sampleValue } from "../prometheus.ts";
import {
  killQemus,
  memoryLogger,
  serveFiles,
  tempRoot,
  tinyRawImage,
  waitUntil,
} from "./helpers.ts";

/** A counter's value (the parser names the family without `_total`, the sample with it). */
function total(f: Map<string, Family>, family: string, labels: Record<string, string>) {
  return sampleValue(f, family, labels, `${family}_total`);
}

/** `ps` of one pid: CPU seconds and RSS bytes (the same tool, run by the test itself). */
async function psOf(pid: number) {
  const out = await new Deno.Command("ps", { args: ["-o", "pid=,cputimes=,rss=", "-p", `${pid}`] })
    .output();
  return parsePsOutput(new TextDecoder().decode(out.stdout)).get(pid)!;
}

Deno.test("agent metrics: per-VM CPU, memory and block I/O of a real VM, over mTLS", async (t) => {
  const root = await tempRoot("qemu:\n  accelerator: tcg\n");
  const http = serveFiles(new Map([["/images/tiny.img", await tinyRawImage()]]));
  const paths = agentPaths(root.cfg);
  const { log } = memoryLogger();
  const vms = new VmManager({
    paths,
    qemu: root.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 5000 }),
    log,
    stopGraceMs: 3000,
  });
  await vms.recover();
  const tasks = new TaskManager(vms, log);
  const pools = new PoolManager(paths.poolsDir, `${paths.stateDir}/desired-pools.json`, log);
  const ca = await createCa("metrics test CA");
  const agentCert = await issueServerCert(ca, "node-m", AGENT_CERT_ORG, splitSans(["127.0.0.1"]));
  const cpCert = await issueServerCert(ca, "cp", CP_CERT_ORG, splitSans(["127.0.0.1"]));
  const metrics = new AgentMetrics(vms);
  const server = await startAgentServer({
    hostname: "127.0.0.1",
    port: 0,
    identity: { nodeName: "node-m", ...agentCert, caPem: ca.certPem, bootstrapped: false },
    app: createAgentApp({ tasks, vms, pools, log, metrics }),
  });
  const asCp = createTlsClient({ caPem: ca.certPem, ...cpCert });
  const asAgent = createTlsClient({ caPem: ca.certPem, ...agentCert });
  const url = `https://127.0.0.1:${server.port}/metrics`;
  const scrape = async () => {
    const res = await fetch(url, { client: asCp });
    assertEquals(res.status, 200);
    assert(res.headers.get("content-type")!.startsWith("text/plain; version=0.0.4"));
    return await parsePrometheus(await res.text());
  };
  try {
    await t.step("no VM: the families are empty, the text still parses", async () => {
      const f = await scrape();
      assertEquals(f.get("otherix_vm_cpu_seconds")?.samples ?? [], []);
    });

    const id = crypto.randomUUID();
    const taskId = crypto.randomUUID();
    tasks.submitCreate({
      task_id: taskId,
      vm: {
        id,
        name: "metered",
        image_url: `${http.base}/images/tiny.img`,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 128,
        disk_gib: 1,
      },
      pool: { name: "default", path: `${paths.poolsDir}/default` },
    });
    const task = (await tasks.wait(taskId))!;
    assertEquals(task.status, "succeeded", JSON.stringify(task.error));
    const pid = vms.get(id)!.pid!;
    const labels = { vm: "metered", id };

    await t.step("a running VM: CPU and memory agree with ps, block reads counted", async () => {
      // The firmware reads the disk's boot sector while it looks for a bootable device.
      let f = await scrape();
      await waitUntil(
        async () => {
          f = await scrape();
          return (total(f, "otherix_vm_block_read_bytes", labels) ?? 0) > 0;
        },
        30_000,
        "the guest read its disk",
      );
      const before = await psOf(pid);
      f = await scrape();
      const after = await psOf(pid);
      const cpu = total(f, "otherix_vm_cpu_seconds", labels)!;
      assert(
        cpu >= before.cpuSeconds && cpu <= after.cpuSeconds,
        `${cpu} vs ps ${before.cpuSeconds}..${after.cpuSeconds}`,
      );
      const rss = sampleValue(f, "otherix_vm_memory_bytes", labels)!;
      const lo = Math.min(before.rssBytes, after.rssBytes) * 0.8;
      const hi = Math.max(before.rssBytes, after.rssBytes) * 1.25;
      assert(rss >= lo && rss <= hi, `rss ${rss} vs ps ${before.rssBytes}/${after.rssBytes}`);
      assertEquals(f.get("otherix_vm_cpu_seconds")!.type, "counter");
      assertEquals(f.get("otherix_vm_memory_bytes")!.type, "gauge");
      const reads = f.get("otherix_vm_block_read_bytes")!.samples
        .filter((s) => s.name === "otherix_vm_block_read_bytes_total" && s.labels.id === id);
      assert(reads.length >= 1 && reads.every((s) => s.labels.device), JSON.stringify(reads));
      assert(total(f, "otherix_vm_block_write_bytes", labels) !== undefined);
      assertEquals(f.get("otherix_vm_network_receive_bytes")?.samples ?? [], [], "NAT NIC only");
    });

    await t.step("only the control plane's certificate may scrape the mTLS port", async () => {
      const res = await fetch(url, { client: asAgent });
      assertEquals(res.status, 403);
      assertEquals((await res.json()).error.code, "permission_denied");
    });

    await t.step("a deleted VM leaves the next scrape", async () => {
      const del = crypto.randomUUID();
      tasks.submitDelete(id, del);
      assertEquals((await tasks.wait(del))!.status, "succeeded");
      const f = await scrape();
      assertEquals(total(f, "otherix_vm_cpu_seconds", labels), undefined);
    });
  } finally {
    asCp.close();
    asAgent.close();
    await server.close();
    await vms.close();
    await killQemus(paths.runDir);
    await http.server.shutdown();
    await root.cleanup();
  }
});

Deno.test("agent metrics parsers: ps lines, and real `ip -s -j link` output", async () => {
  assertEquals(
    [...parsePsOutput(" 4242    17  204800\n  99 0 12\nbogus\n").entries()],
    [[4242, { cpuSeconds: 17, rssBytes: 204800 * 1024 }], [99, { cpuSeconds: 0, rssBytes: 12288 }]],
  );
  const out = await new Deno.Command("ip", { args: ["-s", "-j", "link", "show", "dev", "lo"] })
    .output();
  const stats = parseIpLinkStats(new TextDecoder().decode(out.stdout));
  assert(stats !== null && stats.rxBytes >= 0 && stats.txBytes >= 0, JSON.stringify(stats));
  assertEquals(parseIpLinkStats("not json"), null);
});

Deno.test("agent config: metrics.listen is optional and off by default", () => {
  assertEquals(parseAgentConfig("").metrics.listen, undefined);
  assertEquals(
    parseAgentConfig("metrics:\n  listen: 127.0.0.1:9101\n").metrics.listen,
    { hostname: "127.0.0.1", port: 9101 },
  );
});
