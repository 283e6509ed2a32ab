import { assert, assertEquals, assertRejects } from "../assert.ts";
import { AgentError, createAgentClient } from "../../cp/agent_client.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";

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
    const endpoint = `http://127.0.0.1:${plain.addr.port}`;
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
