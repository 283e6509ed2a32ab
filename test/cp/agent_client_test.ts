import { assert, assertEquals, assertRejects } from "../assert.ts";
import { Hono } from "hono";
import { AgentError, createAgentClient } from "../../cp/agent_client.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import { createCa, createCsr, issueServerCert, signCsr, splitSans } from "../../shared/pki.ts";
import { peerOf, serveTls, type TlsEnv } from "../../shared/tls.ts";

Deno.test("agent client: refuses a non-https agent endpoint without sending anything", async () => {
  const ca = await createCa();
  const replica = await issueServerCert(ca, "cp", CP_CERT_ORG, splitSans(["localhost"]));
  let hits = 0;
  const plain = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    hits++;
    return Response.json({ error: { code: "vm_not_found", message: "x" } }, { status: 404 });
  });
  const client = createAgentClient(ca.certPem, replica);
  try {
    const endpoint = { name: "node-a", endpoint: `http://127.0.0.1:${plain.addr.port}` };
    const e = await assertRejects(() =>
      client.createVm(endpoint, {
        task_id: crypto.randomUUID(),
        vm: {
          id: crypto.randomUUID(),
          name: "vm-1",
          image_url: "http://h/i.img",
          architecture: "amd64",
          vcpus: 1,
          memory_mb: 128,
          disk_gib: 1,
          user_data: "#cloud-config\npassword: secret\n",
        },
        pool: { name: "default", path: "/var/lib/otherix/pools/default" },
      })
    );
    assert(e instanceof AgentError && e.kind === "unreachable", String(e));
    await assertRejects(() => client.deleteVm(endpoint, crypto.randomUUID(), crypto.randomUUID()));
    assertEquals(hits, 0, "nothing was sent in clear text");
  } finally {
    client.close();
    await plain.shutdown();
  }
});

Deno.test("agent client: talks only to the node it means (CN = node name, O = nodes)", async () => {
  const ca = await createCa();
  const replica = await issueServerCert(ca, "cp", CP_CERT_ORG, splitSans(["localhost"]));
  // node-b holds a perfectly valid cluster certificate with a SAN for the shared address.
  const csr = await createCsr("node-b", splitSans(["127.0.0.1"]));
  const nodeB = {
    certPem: await signCsr(ca, csr.csrPem, "node-b", AGENT_CERT_ORG),
    keyPem: csr.keyPem,
  };
  // A control-plane certificate (right CA, wrong organization) must not pass as an agent either.
  const otherCp = await issueServerCert(ca, "node-a", CP_CERT_ORG, splitSans(["127.0.0.1"]));
  let seenBy = "";
  const app = new Hono<TlsEnv>().get("/v1/tasks/:id", (c) => {
    seenBy = peerOf(c.env.incoming).commonName ?? "";
    return c.json({ error: { code: "task_not_found", message: "no such task" } }, 404);
  });
  const client = createAgentClient(ca.certPem, replica);
  for (const server of [nodeB, otherCp]) {
    const srv = await serveTls({
      hostname: "127.0.0.1",
      port: 0,
      ...server,
      caPem: ca.certPem,
      requireClientCert: true,
      fetch: app.fetch,
    });
    try {
      const endpoint = `https://127.0.0.1:${srv.port}`;
      const e = await assertRejects(() =>
        client.getTask({ name: "node-a", endpoint }, crypto.randomUUID())
      );
      assert(e instanceof AgentError && e.kind === "unreachable", String(e));
      assertEquals(seenBy, "", "no request may reach an impostor");
    } finally {
      await srv.close();
    }
  }
  // The genuine node-b is reachable as node-b, with this replica's client certificate.
  const srv = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    ...nodeB,
    caPem: ca.certPem,
    requireClientCert: true,
    fetch: app.fetch,
  });
  try {
    const got = await client.getTask(
      { name: "node-b", endpoint: `https://127.0.0.1:${srv.port}` },
      crypto.randomUUID(),
    );
    assertEquals(got, null); // 404 task_not_found: the agent restarted
    assertEquals(seenBy, "cp");
  } finally {
    client.close();
    await srv.close();
  }
});
