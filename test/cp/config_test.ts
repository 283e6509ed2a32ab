import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { ConfigError } from "../../shared/config.ts";

Deno.test("api config: defaults", () => {
  const cfg = parseApiConfig("");
  assertEquals(cfg.server.listen, { hostname: "0.0.0.0", port: 8080 });
  assertEquals(cfg.server.agent_listen, { hostname: "0.0.0.0", port: 8443 });
  assertEquals(cfg.store.data_dir, "/var/lib/otherix/api");
  assertEquals(cfg.auth.jwt_ttl_seconds, 900);
  assertEquals(cfg.nodes.stale_threshold_seconds, 90);
  assertEquals(cfg.nodes.join_token_ttl_seconds, 600);
  assertEquals(cfg.storage_pools.allowed_path_prefixes, ["/var/lib/otherix/pools/"]);
  assertEquals(cfg.storage_pools.default_pool_name, "default");
  assertEquals(cfg.workers.enabled, true);
  assertEquals(cfg.workers.agent_unreachable_timeout_seconds, 60);
});

Deno.test("api config: env overrides", () => {
  const cfg = parseApiConfig("server:\n  listen: 127.0.0.1:1\n", (n) =>
    ({
      OTHERIX_SERVER__LISTEN: "127.0.0.1:9999",
      OTHERIX_WORKERS__ENABLED: "false",
      OTHERIX_CP_CERT__ADDITIONAL_SANS: "[cp.lan, 10.0.0.5]",
    })[n]);
  assertEquals(cfg.server.listen.port, 9999);
  assertEquals(cfg.workers.enabled, false);
  assertEquals(cfg.cp_cert.additional_sans, ["cp.lan", "10.0.0.5"]);
});

Deno.test("api config: validation messages name the key", () => {
  const msg = (text: string) => {
    const e = assertThrows(() => parseApiConfig(text));
    assert(e instanceof ConfigError, String(e));
    return e.message;
  };
  assertStringIncludes(msg("server:\n  listen: nope\n"), "server.listen");
  assertStringIncludes(msg("server:\n  listen: nope\n"), 'must be host:port, got "nope"');
  assertStringIncludes(msg("store:\n  data_dir: relative/dir\n"), "store.data_dir");
  assertStringIncludes(msg("store:\n  data_dir: relative/dir\n"), "OTHERIX_STORE__DATA_DIR");
  assertStringIncludes(msg("bogus: 1\n"), "bogus: unknown key");
  assertStringIncludes(msg("workers:\n  poll_interval_ms: 1\n"), "workers.poll_interval_ms");
  assertStringIncludes(
    msg("server:\n  tls_cert_file: /x.crt\n"),
    "server.tls_cert_file and server.tls_key_file must be set together",
  );
  assertStringIncludes(
    msg("storage_pools:\n  default_pool_name: Bad_Name\n"),
    "storage_pools.default_pool_name",
  );
  assertStringIncludes(msg(": : :"), "not valid YAML");
});

Deno.test("api config: store backend and an external etcd cluster", async (t) => {
  const external = [
    "store:",
    "  backend: etcd",
    "  etcd:",
    "    endpoints: [https://10.0.0.5:2379, https://etcd-2.lan:2379/]",
    "    ca_file: /etc/otherix/etcd/ca.crt",
    "    cert_file: /etc/otherix/etcd/client.crt",
    "    key_file: /etc/otherix/etcd/client.key",
    "    prefix: /otherix/prod",
    "",
  ].join("\n");
  await t.step("defaults: embedded, no external cluster", () => {
    const cfg = parseApiConfig("");
    assertEquals([cfg.store.backend, cfg.store.etcd.endpoints], ["embedded", []]);
  });
  await t.step("an external cluster with client certificate and prefix", () => {
    const cfg = parseApiConfig(external);
    assertEquals(cfg.store.backend, "etcd");
    assertEquals(cfg.store.etcd.endpoints, ["https://10.0.0.5:2379", "https://etcd-2.lan:2379/"]);
    assertEquals(
      [cfg.store.etcd.ca_file, cfg.store.etcd.cert_file, cfg.store.etcd.key_file],
      ["/etc/otherix/etcd/ca.crt", "/etc/otherix/etcd/client.crt", "/etc/otherix/etcd/client.key"],
    );
    assertEquals(cfg.store.etcd.prefix, "/otherix/prod");
  });
  await t.step("bad values are refused, naming the key", () => {
    const msg = (text: string) => {
      const e = assertThrows(() => parseApiConfig(text));
      assert(e instanceof ConfigError, String(e));
      return e.message;
    };
    const cases: [string, string, string][] = [
      ["etcd:\n    endpoints: [http://10.0.0.5:2379]", "store.etcd.endpoints.0", "https://"],
      ["etcd:\n    endpoints: [https://10.0.0.5]", "store.etcd.endpoints.0", "host:port"],
      ["etcd:\n    endpoints: [https://h:2379/v3]", "store.etcd.endpoints.0", "host:port"],
      ["etcd:\n    endpoints: [https://h:2379]", "store.etcd.ca_file", "required"],
      [
        "etcd:\n    endpoints: [https://h:2379]\n    ca_file: ca.crt",
        "store.etcd.ca_file",
        "absolute",
      ],
      [
        "etcd:\n    endpoints: [https://h:2379]\n    ca_file: /ca\n    cert_file: /c",
        "store.etcd.cert_file",
        "set together",
      ],
      ["etcd:\n    ca_file: /ca", "store.etcd.ca_file", "only used with store.etcd.endpoints"],
      [
        "etcd:\n    endpoints: [https://h:2379]\n    ca_file: /ca\n    prefix: otherix/",
        "store.etcd.prefix",
        "must start with /",
      ],
      ["etcd:\n    endpoint: [https://h:2379]", "store.etcd.endpoint", "unknown key"],
    ];
    for (const [body, key, words] of cases) {
      const m = msg(`store:\n  backend: etcd\n  ${body}\n`);
      assertStringIncludes(m, key, body);
      assertStringIncludes(m, words, body);
    }
    assertStringIncludes(msg("store:\n  backend: mysql\n"), "store.backend");
    assertStringIncludes(
      msg(external.replace("backend: etcd", "backend: embedded")),
      "store.etcd.endpoints",
    );
    assertStringIncludes(
      msg(external.replace("backend: etcd", "backend: embedded")),
      "only used with store.backend: etcd",
    );
  });
});
