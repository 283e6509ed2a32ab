/**
 * `vm create --ssh-key` on the control plane: the merge of keys into the user's cloud-config
 * (cp/vms/cloud_config.ts) and, through the in-process API with a scripted mTLS agent, what
 * reaches the agent, and what is refused (400 `validation_failed` naming the field, nothing
 * stored or sent).
 */
import { parse } from "yaml";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { mergeCloudConfig } from "../../cp/vms/cloud_config.ts";
import { ApiError } from "../../shared/errors.ts";
import { VM_LIMITS } from "../../shared/constants.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp } from "./fixtures.ts";

const ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhcFOCBiy6KxO6Ah7vJwE0nD2hX7OKP8n0z3T2IdnJH me@ed";
const ED2 =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPk2mH3l4qC6yY+Yk2Hh1pqQeW0rQxMiZ7V2h3gVYy9q you@ed";

Deno.test("cloud-config merge: keys join the user's cloud-config, which keeps its content", async (t) => {
  await t.step("no keys: the user-data verbatim (null without any)", () => {
    assertEquals(mergeCloudConfig(undefined, undefined), null);
    assertEquals(mergeCloudConfig(undefined, []), null);
    const ud = "#cloud-config\n# otherix-marker: hi\npackages: [htop]\n";
    assertEquals(mergeCloudConfig(ud, undefined), ud);
  });

  await t.step("keys only: a cloud-config with the list", () => {
    const out = mergeCloudConfig(undefined, [ED, ED2])!;
    assert(out.startsWith("#cloud-config\n"));
    assertEquals(parse(out), { ssh_authorized_keys: [ED, ED2] });
  });

  await t.step("comments, key order and YAML 1.1 scalars (octal modes) survive", () => {
    const ud = "#cloud-config\n# otherix-marker: hi\npackage_update: true  # why\n" +
      "write_files:\n  - path: /etc/x\n    permissions: 0644\n    content: |\n      a\n";
    const out = mergeCloudConfig(ud, [ED])!;
    assertEquals(
      out,
      "#cloud-config\n# otherix-marker: hi\npackage_update: true # why\n" +
        "write_files:\n  - path: /etc/x\n    permissions: 0644\n    content: |\n      a\n" +
        `ssh_authorized_keys:\n  - ${ED}\n`,
    );
  });

  await t.step("an existing list gains the new keys once", () => {
    const ud = `#cloud-config\nssh_authorized_keys:\n  - ${ED}\n`;
    const out = mergeCloudConfig(ud, [ED, ED2, ED2])!;
    assertEquals(parse(out).ssh_authorized_keys, [ED, ED2]);
  });

  await t.step("comments-only user-data keeps its comments", () => {
    const out = mergeCloudConfig("#cloud-config\n# otherix-marker: kept\n", [ED])!;
    assertMatch(out, /^#cloud-config\n# otherix-marker: kept\n/);
    assertEquals(parse(out), { ssh_authorized_keys: [ED] });
  });

  await t.step("merged past the user-data limit: validation_failed", () => {
    const big = "#cloud-config\nx: " + "a".repeat(VM_LIMITS.userDataBytes - 20) + "\n";
    try {
      mergeCloudConfig(big, [ED]);
      throw new Error("accepted");
    } catch (e) {
      assert(e instanceof ApiError);
      assertEquals(e.code, "validation_failed");
      assertMatch(e.message, /at most 65536/);
    }
  });
});

Deno.test("cp: --ssh-key reaches the agent merged; bad keys and user-data are 400, nothing created", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cp-ci-" });
  const cp = await startTestCp(dir, new LogCapture());
  const agent = new FakeAgent(cp, "node-a");
  try {
    await agent.bootstrap();
    const api = await apiFor(cp);
    await agent.heartbeat();
    const body = (name: string, over: Record<string, unknown> = {}) => ({
      name,
      image_url: "http://127.0.0.1:1/images/img.raw",
      architecture: "amd64",
      memory_mb: 128,
      ...over,
    });

    await t.step("keys and user-data: the agent gets one cloud-config with both", async () => {
      const res = await api(
        "POST",
        "/v1/vms",
        body("keyed", {
          user_data: "#cloud-config\n# otherix-marker: hi\nhostname: keyed\n",
          ssh_authorized_keys: [ED, ED2],
        }),
      );
      assertEquals(res.status, 202, JSON.stringify(res.json));
      const sent = await until(() => agent.creates.find((c) => c.vm.name === "keyed"));
      assertEquals(
        sent.vm.user_data,
        `#cloud-config\n# otherix-marker: hi\nhostname: keyed\nssh_authorized_keys:\n  - ${ED}\n  - ${ED2}\n`,
      );
    });

    await t.step("a malformed key: 400 naming its index, nothing stored or sent", async () => {
      const before = agent.creates.length;
      const res = await api(
        "POST",
        "/v1/vms",
        body("badkey", {
          ssh_authorized_keys: [ED, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhcF"],
        }),
      );
      assertEquals([res.status, res.json.error.code], [400, "validation_failed"]);
      assertEquals(res.json.error.details.fields[0].path, "ssh_authorized_keys.1");
      assertMatch(res.json.error.message, /ssh_authorized_keys\.1: not an SSH public key/);
      assertEquals((await api("GET", "/v1/vms/badkey")).json.error.code, "vm_not_found");
      assertEquals(agent.creates.length, before);
    });

    await t.step(
      "user-data that is not cloud-config: 400 on user_data, nothing created",
      async () => {
        for (const ud of ["#!/bin/sh\necho hi\n", "#cloud-config\n- a\n", "hi"]) {
          const res = await api("POST", "/v1/vms", body("badud", { user_data: ud }));
          assertEquals([res.status, res.json.error.code], [400, "validation_failed"], ud);
          assertEquals(res.json.error.details.fields[0].path, "user_data");
        }
        assertEquals((await api("GET", "/v1/vms/badud")).json.error.code, "vm_not_found");
      },
    );

    await t.step("merged user-data past the limit: 400, nothing created", async () => {
      const big = "#cloud-config\nx: " + "a".repeat(VM_LIMITS.userDataBytes - 20) + "\n";
      const res = await api(
        "POST",
        "/v1/vms",
        body("big", { user_data: big, ssh_authorized_keys: [ED] }),
      );
      assertEquals([res.status, res.json.error.code], [400, "validation_failed"]);
      assertEquals((await api("GET", "/v1/vms/big")).json.error.code, "vm_not_found");
    });
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

async function until<T>(fn: () => T | undefined, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 25));
  }
}
