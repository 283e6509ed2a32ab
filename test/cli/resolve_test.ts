import { assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { type CliConfig, emptyConfig, upsertCluster } from "../../cli/config_store.ts";
import { resolveTarget, type TargetInputs } from "../../cli/resolve.ts";

function config(): CliConfig {
  let cfg = upsertCluster(emptyConfig(), {
    name: "current",
    server: "http://current:8080",
    token: "tok-current",
  }, { replace: false, use: true });
  cfg = upsertCluster(cfg, { name: "named", server: "http://named:8080/", token: "tok-named" }, {
    replace: false,
    use: false,
  });
  return cfg;
}

function inputs(
  flags: TargetInputs["flags"],
  env: Record<string, string> = {},
  cfg: CliConfig = config(),
): TargetInputs & { loads: number } {
  const i = {
    loads: 0,
    flags,
    env: (n: string) => env[n],
    loadConfig: () => {
      i.loads++;
      return Promise.resolve(cfg);
    },
    configPath: "/tmp/cfg",
  };
  return i;
}

const ENV = { OTHERIX_SERVER: "http://env:8080", OTHERIX_API_TOKEN: "tok-env" };
const FLAGS = { endpoint: "http://flag:8080", token: "tok-flag" };

Deno.test("precedence layer 1: flags beat env, --cluster and current-cluster", async () => {
  const i = inputs({ ...FLAGS }, ENV);
  const t = await resolveTarget(i);
  assertEquals([t.endpoint, t.token, t.endpointSource, t.tokenSource], [
    "http://flag:8080",
    "tok-flag",
    "flag",
    "flag",
  ]);
  assertEquals(i.loads, 0); // the config is not even read
});

Deno.test("precedence layer 2: env beats --cluster and current-cluster", async () => {
  const t = await resolveTarget(inputs({ cluster: "named" }, ENV));
  assertEquals([t.endpoint, t.token, t.endpointSource, t.tokenSource], [
    "http://env:8080",
    "tok-env",
    "env",
    "env",
  ]);
});

Deno.test("precedence layer 3: --cluster beats current-cluster (trailing slash trimmed)", async () => {
  const t = await resolveTarget(inputs({ cluster: "named" }));
  assertEquals([t.endpoint, t.token, t.endpointSource, t.tokenSource], [
    "http://named:8080",
    "tok-named",
    "cluster",
    "cluster",
  ]);
});

Deno.test("precedence layer 4: current-cluster", async () => {
  const t = await resolveTarget(inputs({}));
  assertEquals([t.endpoint, t.token, t.endpointSource, t.tokenSource], [
    "http://current:8080",
    "tok-current",
    "current-cluster",
    "current-cluster",
  ]);
});

Deno.test("precedence: endpoint and token resolve independently", async () => {
  const a = await resolveTarget(
    inputs({ endpoint: "http://flag:8080" }, { OTHERIX_API_TOKEN: "tok-env" }),
  );
  assertEquals([a.endpoint, a.token, a.endpointSource, a.tokenSource], [
    "http://flag:8080",
    "tok-env",
    "flag",
    "env",
  ]);
  const b = await resolveTarget(inputs({ token: "tok-flag", cluster: "named" }));
  assertEquals([b.endpoint, b.token], ["http://named:8080", "tok-flag"]);
  const c = await resolveTarget(inputs({}, { OTHERIX_SERVER: "http://env:8080" }));
  assertEquals([c.endpoint, c.token, c.tokenSource], [
    "http://env:8080",
    "tok-current",
    "current-cluster",
  ]);
});

Deno.test("precedence layer 5: fail with no endpoint / no token configured", async () => {
  const e1 = await assertRejects(() => resolveTarget(inputs({}, {}, emptyConfig())));
  assertStringIncludes(e1.message, "no endpoint configured");
  const e2 = await assertRejects(() =>
    resolveTarget(inputs({}, { OTHERIX_SERVER: "http://env:8080" }, emptyConfig()))
  );
  assertStringIncludes(e2.message, "no token configured");
});

Deno.test("precedence: unknown --cluster, dangling current-cluster, bad endpoint", async () => {
  assertStringIncludes(
    (await assertRejects(() => resolveTarget(inputs({ cluster: "nope" })))).message,
    'cluster "nope" not found',
  );
  const dangling = { ...emptyConfig(), "current-cluster": "gone" };
  assertStringIncludes(
    (await assertRejects(() => resolveTarget(inputs({}, {}, dangling)))).message,
    'current cluster "gone" is not defined',
  );
  assertStringIncludes(
    (await assertRejects(() => resolveTarget(inputs({ endpoint: "localhost:8080", token: "t" }))))
      .message,
    "invalid endpoint",
  );
});

Deno.test("several endpoints: each layer may list replicas, in order", async () => {
  const listed = (await resolveTarget(
    inputs({ endpoint: "http://a:8080/, http://b:8080", token: "t" }),
  )).endpoints;
  assertEquals(listed, ["http://a:8080", "http://b:8080"]);
  const fromEnv = await resolveTarget(
    inputs({}, { OTHERIX_SERVER: "http://e1,http://e2", OTHERIX_API_TOKEN: "t" }),
  );
  assertEquals([fromEnv.endpoint, fromEnv.endpoints], ["http://e1", ["http://e1", "http://e2"]]);
  const cfg = upsertCluster(emptyConfig(), {
    name: "ha",
    server: ["http://r1:8080", "http://r2:8080/"],
    token: "tok-ha",
  }, { replace: false, use: true });
  const fromConfig = await resolveTarget(inputs({}, {}, cfg));
  assertEquals(fromConfig.endpoints, ["http://r1:8080", "http://r2:8080"]);
  assertStringIncludes(
    (await assertRejects(() => resolveTarget(inputs({ endpoint: "http://a,ftp://b", token: "t" }))))
      .message,
    'invalid endpoint "ftp://b"',
  );
});
