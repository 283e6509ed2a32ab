/**
 * A control plane on an external etcd cluster (`store.etcd.endpoints`, issue 11: "An existing
 * external etcd cluster can be named instead"): a real etcd with client TLS, a real control
 * plane on it. It serves, `GET /v1/cluster/members` shows the external cluster's member, and
 * joins and removals through Otherix are refused (that membership is the operator's).
 */
import { assertEquals, assertMatch } from "../assert.ts";
import { startEtcd } from "../etcd.ts";
import { apiFor, LogCapture } from "./fixtures.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { startControlPlane } from "../../cp/app.ts";

Deno.test("external etcd: the control plane runs on it and shows its members", async () => {
  const etcd = await startEtcd();
  const dir = await Deno.makeTempDir({ prefix: "otx-ext-etcd-" });
  const f = etcd.tls!.files;
  const cfg = parseApiConfig(
    `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n` +
      `store:\n  backend: etcd\n  data_dir: ${dir}\n  etcd:\n` +
      `    endpoints: [${etcd.endpoints.join(", ")}]\n` +
      `    ca_file: ${f.ca}\n    cert_file: ${f.cert}\n    key_file: ${f.key}\n` +
      `    prefix: /otherix\n`,
  );
  const cp = await startControlPlane(cfg, new LogCapture().logger(), {
    getEnv: (n) =>
      ({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "admin@example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "admin-password",
      })[n],
    host: { hostname: "localhost", addresses: [] },
  });
  try {
    const api = await apiFor(cp);
    const members = await api("GET", "/v1/cluster/members");
    assertEquals(members.status, 200, members.text);
    assertEquals(members.json.backend, "etcd");
    assertEquals(members.json.members.length, 1);
    assertEquals([members.json.members[0].role, members.json.members[0].healthy], [
      "voter",
      true,
    ]);
    // The records live in etcd under the prefix.
    const user = await cp.ctx.store.range("/users/");
    assertEquals(user.kvs.length, 1);
    const removed = await api("DELETE", `/v1/cluster/members/${members.json.members[0].name}`);
    assertEquals(removed.status, 409);
    assertMatch(removed.json.error.message, /external etcd cluster: manage its members/);
  } finally {
    await cp.stop();
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
