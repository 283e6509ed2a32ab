import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { CaDivergenceError, ensureClusterPki, pkiPaths, replicaProblem } from "../../cp/pki.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { keys } from "../../cp/repo/records.ts";
import { certFingerprint, certInfo, createCa, isSignedBy } from "../../shared/pki.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { createLogger } from "../../shared/log.ts";

const log = createLogger("test", "error");
const host = { hostname: "cp-host", addresses: ["192.0.2.7"] };

function cfgFor(dir: string, extra = "") {
  return parseApiConfig(
    `store:\n  data_dir: ${dir}\nserver:\n  listen: 10.1.2.3:8080\n  agent_listen: 0.0.0.0:8443\n${extra}`,
  );
}

Deno.test("pki: first boot creates CA + replica cert; later boots reuse; SAN change re-issues", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-pki-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    const cfg = cfgFor(dir);
    const p1 = await ensureClusterPki(store, cfg, log, host);
    const paths = pkiPaths(dir);
    const diskCa = await Deno.readTextFile(paths.caCert);
    assertEquals(await certFingerprint(diskCa), p1.caFingerprint);
    assertEquals(
      (await store.get<{ fingerprint: string }>(keys.ca))?.value.fingerprint,
      p1.caFingerprint,
    );
    assertEquals((await Deno.stat(paths.replicaKey)).mode! & 0o777, 0o600);
    const info = certInfo(p1.replica.certPem);
    assertEquals([info.commonName, info.organization], ["cp-host", CP_CERT_ORG]);
    for (const san of ["localhost", "127.0.0.1", "::1", "cp-host", "10.1.2.3", "192.0.2.7"]) {
      assert(info.sans.includes(san), `SAN ${san} in ${info.sans}`);
    }
    assert(await isSignedBy(p1.replica.certPem, p1.ca.certPem));

    const p2 = await ensureClusterPki(store, cfg, log, host);
    assertEquals(p2.caFingerprint, p1.caFingerprint);
    assertEquals(p2.replica.certPem, p1.replica.certPem, "replica cert reused");

    const p3 = await ensureClusterPki(
      store,
      cfgFor(dir, "cp_cert:\n  additional_sans: [cp.lan, 10.9.9.9]\n  replica_name: cp-1\n"),
      log,
      host,
    );
    assertEquals(p3.caFingerprint, p1.caFingerprint, "CA unchanged");
    assert(p3.replica.certPem !== p1.replica.certPem, "re-issued for new SANs");
    const i3 = certInfo(p3.replica.certPem);
    assertEquals(i3.commonName, "cp-1");
    assert(i3.sans.includes("cp.lan") && i3.sans.includes("10.9.9.9"));

    // Expiring within 30 days → re-issue.
    const soon = new Date(info.notAfter.getTime() - 10 * 24 * 3600 * 1000);
    assertEquals(await replicaProblem(p1.replica, p1.ca, "cp-host", [], soon), "expires soon");
    assertEquals(
      await replicaProblem(p1.replica, p1.ca, "cp-host", ["localhost"], new Date()),
      null,
    );
    const other = await createCa();
    assertEquals(
      await replicaProblem(p1.replica, other, "cp-host", [], new Date()),
      "not signed by the cluster CA",
    );
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pki: on-disk CA that differs from the store CA fails startup", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-pki-" });
  let store = await openKvStore(`${dir}/store.kv`);
  try {
    const cfg = cfgFor(dir);
    await ensureClusterPki(store, cfg, log, host);
    const paths = pkiPaths(dir);
    const other = await createCa();
    await Deno.writeTextFile(paths.caCert, other.certPem);
    const e = await assertRejects(() => ensureClusterPki(store, cfg, log, host));
    assert(e instanceof CaDivergenceError);
    assertStringIncludes(e.message, "cluster CA divergence: on-disk CA");
    assertStringIncludes(e.message, "does not match active etcd CA");
    // Wiped store, stale on-disk CA: also divergence (the CA key is gone).
    await store.close();
    await Deno.remove(`${dir}/store.kv`);
    store = await openKvStore(`${dir}/store.kv`);
    const e2 = await assertRejects(() => ensureClusterPki(store, cfg, log, host));
    assert(e2 instanceof CaDivergenceError);
    assertStringIncludes(e2.message, "does not match active etcd CA");
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
