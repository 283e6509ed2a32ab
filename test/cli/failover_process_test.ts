/**
 * Several endpoints for one cluster (issue 11), end to end: the real CLI process (`deno run`
 * with its sandbox flags) against one real control plane listed after a dead address (a
 * closed port), a server that drops connections after reading the request, or a TCP proxy
 * that breaks an event stream. Two control planes started by the tests would be two
 * clusters, so the other "replicas" are these broken addresses.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp } from "../cp/fixtures.ts";
import { closedPort, runCli, spawnCli } from "./fixtures.ts";
import { TcpProxy } from "./proxy.ts";

/** A server on 127.0.0.1 that reads one request per connection and drops the connection. */
function dropper() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: string[] = [];
  const loop = (async () => {
    for await (const c of listener) {
      void (async () => {
        const buf = new Uint8Array(64 * 1024);
        const n = await c.read(buf).catch(() => null);
        if (n) requests.push(new TextDecoder().decode(buf.subarray(0, n)).split("\r\n")[0]);
        c.close();
      })();
    }
  })();
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    requests,
    async close() {
      listener.close();
      await loop;
    },
  };
}

Deno.test("several endpoints: the CLI fails over from dead and broken addresses to the control plane", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-failover-" });
  const cp = await startTestCp(`${dir}/cp`, new LogCapture());
  const agent = new FakeAgent(cp, "node-a");
  const drop = dropper();
  const proxy = new TcpProxy(cp.publicPort);
  try {
    await agent.bootstrap();
    const api = await apiFor(cp);
    const real = `http://127.0.0.1:${cp.publicPort}`;
    const dead = `http://127.0.0.1:${closedPort()}`;
    const login = await fetch(`${real}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "admin@example.com", password: "admin-password" }),
    });
    const token = (await login.json()).access_token as string;
    const home = `${dir}/home`;
    await Deno.mkdir(home);
    const cli = (args: string[], server: string) =>
      runCli(args, { home, env: { OTHERIX_SERVER: server, OTHERIX_API_TOKEN: token } });
    const tokenNames = async () =>
      ((await api("GET", "/v1/users/me/api-tokens")).json.items as { name: string }[])
        .map((i) => i.name);

    await t.step("a dead address first: vm list answers from the next one", async () => {
      const r = await cli(["vm", "list"], `${dead},${real}`);
      assertEquals([r.code, r.stderr], [0, ""]);
      assertMatch(r.stdout, /^NAME +STATUS/);
    });

    await t.step("refused first: a POST goes to the next (it never reached a server)", async () => {
      const r = await cli(["token", "create", "--name", "after-refused"], `${dead},${real}`);
      assertEquals([r.code, r.stderr], [0, ""]);
      assert((await tokenNames()).includes("after-refused"));
    });

    await t.step(
      "dropped after the request was sent: GET moves on, POST is not re-sent",
      async () => {
        const list = await cli(["vm", "list"], `${drop.url},${real}`);
        assertEquals([list.code, list.stderr], [0, ""]);
        const r = await cli(["token", "create", "--name", "not-resent"], `${drop.url},${real}`);
        assertEquals(r.code, 1);
        assertMatch(
          r.stderr,
          new RegExp(`^request_failed: POST /v1/users/me/api-tokens to ${drop.url} failed: `),
        );
        assert(drop.requests.includes("POST /v1/users/me/api-tokens HTTP/1.1"), `${drop.requests}`);
        assert(!(await tokenNames()).includes("not-resent"), "the control plane never got it");
      },
    );

    await t.step("config file: a cluster's server list, stored and used in order", async () => {
      const add = await runCli([
        "config",
        "add",
        "cluster",
        "--name",
        "ha",
        "--server",
        `${dead},${real}`,
        "--login",
        "admin@example.com",
        "--password",
        "admin-password",
      ], { home });
      assertEquals([add.code, add.stderr], [0, ""]);
      assertEquals(add.stdout, `cluster added: name=ha server=${dead},${real} current=true\n`);
      const text = await Deno.readTextFile(`${home}/.otherix/config`);
      assertStringIncludes(text, `server:\n      - ${dead}\n      - ${real}\n`);
      const list = await runCli(["config", "list"], { home });
      assertMatch(list.stdout, new RegExp(`^ha +${dead},${real} +\\*$`, "m"));
      const vms = await runCli(["vm", "list"], { home });
      assertEquals([vms.code, vms.stderr], [0, ""]);
    });

    await t.step("a watch whose stream breaks reconnects to the next endpoint", async () => {
      const watch = spawnCli(["vm", "list", "--watch"], {
        home,
        env: { OTHERIX_SERVER: `${proxy.url},${real}`, OTHERIX_API_TOKEN: token },
      });
      try {
        await watch.until("the table header", (out) => out.startsWith("NAME"));
        await proxy.until(
          "the event stream through the proxy",
          () => proxy.requestLines().some((l) => l.startsWith("GET /v1/events")),
        );
        const before = proxy.connections.length;
        proxy.hold(); // a reconnection to the proxy would hang here
        for (const c of proxy.connections) c.cut();
        await agent.heartbeat();
        const created = await api("POST", "/v1/vms", {
          name: "watch-vm",
          image_url: "http://127.0.0.1:1/images/img.raw",
          architecture: "amd64",
          vcpus: 1,
          memory_mb: 256,
          disk_gib: 1,
        });
        assertEquals(created.status, 202, created.text);
        await watch.until("watch-vm's row", (out) => /^watch-vm +\S+/m.test(out));
        assertEquals(proxy.connections.length, before, "no reconnection through the proxy");
      } finally {
        watch.child.kill("SIGINT");
      }
      const r = await watch.result();
      assertEquals(r.code, 0, r.stderr);
    });
  } finally {
    await proxy.close();
    await drop.close();
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
