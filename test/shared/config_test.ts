import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import { ConfigError, envName } from "../../shared/config.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { agentPaths, parseAgentConfig, parseEnvFile } from "../../agent/config.ts";

Deno.test("config: defaults of the control plane follow the spec", () => {
  const cfg = parseApiConfig("");
  assertEquals(cfg.server.listen, { hostname: "0.0.0.0", port: 8080 });
  assertEquals(cfg.server.agent_listen, { hostname: "0.0.0.0", port: 8443 });
  assertEquals(cfg.auth.jwt_ttl_seconds, 900);
  assertEquals(cfg.nodes.stale_threshold_seconds, 90);
  assertEquals(cfg.nodes.join_token_ttl_seconds, 600);
  assertEquals(cfg.storage_pools.allowed_path_prefixes, ["/var/lib/otherix/pools/"]);
  assertEquals(cfg.storage_pools.default_pool_name, "default");
});

Deno.test("config: OTHERIX_<SECTION>__<KEY> overrides the file, typed by the schema", () => {
  const env: Record<string, string> = {
    OTHERIX_NODES__STALE_THRESHOLD_SECONDS: "30",
    OTHERIX_WORKERS__ENABLED: "false",
    OTHERIX_CP_CERT__ADDITIONAL_SANS: "[cp.lan, 10.0.0.2]",
    OTHERIX_SERVER__LISTEN: "127.0.0.1:9000",
  };
  const cfg = parseApiConfig("nodes:\n  stale_threshold_seconds: 60\n", (n) => env[n]);
  assertEquals(cfg.nodes.stale_threshold_seconds, 30);
  assertEquals(cfg.workers.enabled, false);
  assertEquals(cfg.cp_cert.additional_sans, ["cp.lan", "10.0.0.2"]);
  assertEquals(cfg.server.listen, { hostname: "127.0.0.1", port: 9000 });
  assertEquals(envName(["bootstrap", "cp_url"]), "OTHERIX_BOOTSTRAP__CP_URL");
  // String keys take the value verbatim, even when YAML would read a number.
  const numeric: Record<string, string> = {
    OTHERIX_CP_CERT__REPLICA_NAME: "007",
    OTHERIX_STORAGE_POOLS__DEFAULT_POOL_NAME: "1e3",
  };
  const cfg2 = parseApiConfig("", (n) => numeric[n]);
  assertEquals([cfg2.cp_cert.replica_name, cfg2.storage_pools.default_pool_name], ["007", "1e3"]);
  const agent = parseAgentConfig(
    "",
    (n) => n === "OTHERIX_BOOTSTRAP__NODE_NAME" ? "42" : undefined,
  );
  assertEquals(agent.bootstrap.node_name, "42");
});

Deno.test("config: invalid values and unknown keys fail naming the key", () => {
  const bad = assertThrows(() => parseApiConfig("nodes:\n  stale_threshold_seconds: -1\n"));
  assert(bad instanceof ConfigError);
  assertStringIncludes(bad.message, "nodes.stale_threshold_seconds");
  const unknown = assertThrows(() => parseApiConfig("store:\n  data_dirr: /x\n"));
  assertStringIncludes(unknown.message, "store.data_dirr: unknown key");
  const env = assertThrows(() =>
    parseApiConfig("", (n) => n === "OTHERIX_SERVER__LISTEN" ? "nope" : undefined)
  );
  assertStringIncludes(env.message, "OTHERIX_SERVER__LISTEN");
  const yaml = assertThrows(() => parseApiConfig("server: [unclosed"));
  assertStringIncludes(yaml.message, "not valid YAML");
  const tls = assertThrows(() => parseApiConfig("server:\n  tls_cert_file: /a.pem\n"));
  assertStringIncludes(tls.message, "tls_key_file");
});

Deno.test("config: agent paths derive from the three roots", () => {
  const cfg = parseAgentConfig(
    "paths:\n  config_dir: /t/etc/otherix\n  state_dir: /t/var/lib/otherix\n  run_dir: /t/run/otherix\n",
  );
  const p = agentPaths(cfg);
  assertEquals(p.certDir, "/t/var/lib/otherix/certs");
  assertEquals(p.poolsDir, "/t/var/lib/otherix/pools");
  assertEquals(p.vmsDir, "/t/var/lib/otherix/vms");
  assertEquals(p.vmSocketsDir, "/t/run/otherix/vms");
  assertEquals(p.tokenFile, "/t/etc/otherix/bootstrap-token");
  assertEquals(p.envFile, "/t/etc/otherix/bootstrap.env");
  assertEquals(parseAgentConfig("").qemu.accelerator, "auto");
  assertEquals(parseAgentConfig("qemu:\n  accelerator: tcg\n").qemu.accelerator, "tcg");
  assertThrows(() => parseAgentConfig("qemu:\n  accelerator: hvf\n"));
});

Deno.test("config: bootstrap.env lines are KEY=value with comments and quotes", () => {
  const env = parseEnvFile(
    "# written by seed-dev\nOTHERIX_BOOTSTRAP__CP_URL=https://cp:8443\n\nexport OTHERIX_BOOTSTRAP__NODE_NAME='node-a'\n",
    "bootstrap.env",
  );
  assertEquals(env, {
    OTHERIX_BOOTSTRAP__CP_URL: "https://cp:8443",
    OTHERIX_BOOTSTRAP__NODE_NAME: "node-a",
  });
  const bad = assertThrows(() => parseEnvFile("not a pair\n", "bootstrap.env"));
  assertStringIncludes(bad.message, "bootstrap.env:1");
});
