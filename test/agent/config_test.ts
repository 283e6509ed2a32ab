import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import { agentPaths, parseAgentConfig, parseEnvFile } from "../../agent/config.ts";

Deno.test("config: env file parse handles comments, export, quotes", () => {
  const env = parseEnvFile(
    [
      "# written by seed-dev",
      "",
      "OTHERIX_BOOTSTRAP__CP_URL=https://cp.lan:8443",
      "export OTHERIX_BOOTSTRAP__NODE_NAME='node-a'",
      '  OTHERIX_BOOTSTRAP__CA_FINGERPRINT="sha256:' + "a".repeat(64) + '"  ',
      "OTHERIX_EMPTY=",
    ].join("\n"),
    "bootstrap.env",
  );
  assertEquals(env, {
    OTHERIX_BOOTSTRAP__CP_URL: "https://cp.lan:8443",
    OTHERIX_BOOTSTRAP__NODE_NAME: "node-a",
    OTHERIX_BOOTSTRAP__CA_FINGERPRINT: "sha256:" + "a".repeat(64),
    OTHERIX_EMPTY: "",
  });
});

Deno.test("config: env file malformed line names file and line", () => {
  const e = assertThrows(() => parseEnvFile("A=1\nnot a pair\n", "/etc/otherix/bootstrap.env"));
  assertStringIncludes(e.message, "/etc/otherix/bootstrap.env:2");
});

Deno.test("config: defaults and env overrides", () => {
  const cfg = parseAgentConfig("paths:\n  state_dir: /tmp/x/state\n", (n) =>
    ({
      OTHERIX_QEMU__ACCELERATOR: "tcg",
      OTHERIX_SERVER__LISTEN: "127.0.0.1:0",
    })[n]);
  assertEquals(cfg.qemu.accelerator, "tcg");
  assertEquals(cfg.server.listen, { hostname: "127.0.0.1", port: 0 });
  assertEquals(cfg.qemu.start_timeout_seconds, 30);
  const p = agentPaths(cfg);
  assertEquals(p.certDir, "/tmp/x/state/certs");
  assertEquals(p.vmSocketsDir, "/run/otherix/vms");
  assertEquals(p.tokenFile, "/etc/otherix/bootstrap-token");
});

Deno.test("config: serial log cap and image download cap", () => {
  const d = parseAgentConfig("");
  assertEquals(d.qemu.serial_log_max_bytes, 8 * 1024 * 1024);
  assertEquals(d.images.max_download_bytes, 64 * 1024 ** 3);
  const c = parseAgentConfig(
    "qemu:\n  serial_log_max_bytes: 65536\n",
    (n) => ({ OTHERIX_IMAGES__MAX_DOWNLOAD_BYTES: "1099511627776" })[n],
  );
  assertEquals(c.qemu.serial_log_max_bytes, 65536);
  assertEquals(c.images.max_download_bytes, 1024 ** 4);
  const e = assertThrows(() => parseAgentConfig("qemu:\n  serial_log_max_bytes: 65535\n"));
  assertStringIncludes(e.message, "qemu.serial_log_max_bytes");
  assertThrows(() => parseAgentConfig("images:\n  max_download_bytes: 0\n"));
});

Deno.test("config: migration port range and advertise_url are checked at load", () => {
  assertEquals(parseAgentConfig("").migration.port_range, "49152-49251");
  for (const bad of ["80-90", "50000-40000", "49152", "49152-70000"]) {
    const e = assertThrows(() => parseAgentConfig(`migration:\n  port_range: "${bad}"\n`));
    assert(String(e).includes("migration.port_range"), String(e));
  }
  const http = assertThrows(() =>
    parseAgentConfig("server:\n  advertise_url: http://10.0.0.5:9443\n")
  );
  assert(String(http).includes("https://"), String(http));
});
