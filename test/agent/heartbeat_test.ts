/**
 * The heartbeat loop against a control plane that goes away and comes back: failures are
 * logged and retried, heartbeats resume on their own, and `stop()` ends the loop promptly.
 */
import { assert, assertEquals } from "../assert.ts";
import { agentPaths } from "../../agent/config.ts";
import { type HeartbeatOptions, startHeartbeat } from "../../agent/heartbeat.ts";
import { ImageCache } from "../../agent/images.ts";
import { PoolManager } from "../../agent/pools.ts";
import { parseDfOutput, SystemInfo, TEST_READINGS_ENV } from "../../agent/sysinfo.ts";
import { VmManager } from "../../agent/vms.ts";
import { type FakeCp, startFakeCp } from "./fake_cp.ts";
import type { Logger } from "../../shared/log.ts";
import { memoryLogger, tempRoot } from "./helpers.ts";

/** A TCP proxy to `port` that, while `down`, drops every connection (open ones included). */
function toggleProxy(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  let down = false;
  const closeAll = () => {
    for (const c of open) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    open.clear();
  };
  const serving = (async () => {
    for await (const conn of listener) {
      if (down) {
        conn.close();
        continue;
      }
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port });
      open.add(conn);
      open.add(upstream);
      conn.readable.pipeTo(upstream.writable).catch(() => {});
      upstream.readable.pipeTo(conn.writable).catch(() => {});
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    setDown(v: boolean) {
      down = v;
      if (v) closeAll();
    },
    async close() {
      listener.close();
      closeAll();
      await serving.catch(() => {});
    },
  };
}

async function until(pred: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A heartbeat loop of node `node-a` (certificate `cert`) against `cpUrl`, 1 s interval. */
function startTestHeartbeat(
  t: Awaited<ReturnType<typeof tempRoot>>,
  cpUrl: string,
  cp: FakeCp,
  cert: { certPem: string; keyPem: string },
  log: Logger,
  over: Partial<HeartbeatOptions> = {},
) {
  const paths = agentPaths(t.cfg);
  return startHeartbeat({
    cpUrl,
    identity: { nodeName: "node-a", ...cert, caPem: cp.ca.certPem, bootstrapped: false },
    endpoint: "https://127.0.0.1:9443",
    accelerator: "tcg",
    poolsDir: paths.poolsDir,
    system: new SystemInfo(paths.stateDir, log),
    pools: new PoolManager(paths.poolsDir, `${paths.stateDir}/desired-pools.json`, log),
    vms: new VmManager({
      paths,
      qemu: t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 1000 }),
      log,
    }),
    initialIntervalSeconds: 1,
    log,
    ...over,
  });
}

Deno.test("heartbeat: survives a control plane outage and resumes by itself", async () => {
  const cp = await startFakeCp();
  const proxy = toggleProxy(Number(new URL(cp.url).port));
  const t = await tempRoot();
  const { log, lines } = memoryLogger();
  const cert = await cp.agentClient("node-a");
  const hb = startTestHeartbeat(t, `https://127.0.0.1:${proxy.port}`, cp, cert, log, {
    requestTimeoutMs: 2000,
  });
  const failures = () => lines.filter((l) => l.includes("heartbeat: failed")).length;
  const oks = () => lines.filter((l) => l.includes("heartbeat: ok")).length;
  try {
    // The agent logs `heartbeat: ok` once it has read the response, which is after the CP
    // counted the request: wait for the log line itself.
    await until(() => oks() >= 1);
    proxy.setDown(true);
    await until(() => failures() >= 2); // retried, not given up
    const during = cp.heartbeats.length;
    proxy.setDown(false);
    await until(() => cp.heartbeats.length > during);
    await until(() => oks() >= 2); // the recovery is logged

    assertEquals(cp.heartbeatPeers.every((p) => p === "node-a"), true);
  } finally {
    const t0 = performance.now();
    await hb.stop();
    assert(performance.now() - t0 < 3000, "stop() ends the loop promptly");
    await proxy.close();
    await cp.close();
    await t.cleanup();
  }
});

Deno.test("heartbeat: a steady agent keeps one connection (one TLS handshake)", async () => {
  const cp = await startFakeCp();
  const t = await tempRoot();
  const { log } = memoryLogger();
  const cert = await cp.agentClient("node-a");
  const hb = startTestHeartbeat(t, cp.url, cp, cert, log);
  try {
    await until(() => cp.heartbeats.length >= 3);
    assertEquals(new Set(cp.heartbeatPorts).size, 1, `ports: ${cp.heartbeatPorts}`);
  } finally {
    await hb.stop();
    await cp.close();
    await t.cleanup();
  }
});

Deno.test("system info: readings for heartbeats", async (t) => {
  await t.step("df output parses into bytes; anything else is an error", () => {
    assertEquals(
      parseDfOutput("     1B-blocks        Avail\n270553174016 120000000000\n"),
      { total_bytes: 270553174016, available_bytes: 120000000000 },
    );
    let threw = false;
    try {
      parseDfOutput("df: /: No such file or directory\n");
    } catch {
      threw = true;
    }
    assert(threw, "garbage is refused");
  });

  await t.step("the test hook replaces the named readings, and says so once", async () => {
    const dir = await Deno.makeTempDir({ prefix: "otx-sysinfo-" });
    try {
      const file = `${dir}/readings.json`;
      const { log, lines } = memoryLogger();
      const info = new SystemInfo(dir, log, (n) => n === TEST_READINGS_ENV ? file : undefined);
      const real = await info.read();
      assert(real.memory_total_mib > 0 && real.system_disk_total_bytes > 0, "real figures");
      await Deno.writeTextFile(file, JSON.stringify({ memory_available_mib: 7 }));
      const low = await info.read();
      assertEquals(low.memory_available_mib, 7);
      assertEquals(low.memory_total_mib, real.memory_total_mib, "others untouched");
      await Deno.writeTextFile(file, JSON.stringify({ memory_available_mib: -1 }));
      assert((await info.read()).memory_available_mib >= 0, "an invalid file is ignored");
      assertEquals(lines.filter((l) => l.includes("readings come from a test file")).length, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
