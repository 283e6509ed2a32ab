// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Users, API tokens and VM ownership on a real in-process control plane (issue 9): the admin
 * user API (create, list, get, role, password, delete; the last admin), one's own account
 * (password, tokens, the token in use), and developers changing only their own VMs.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { keys, type UserRecord } from "../../cp/repo/records.ts";
import { rangeAll } from "../../cp/store/store.ts";
import { type Api, apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";

const ADMIN = { email: "admin@example.com", password: "admin-password" };

interface Caller {
  (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
}

/** A client with `credential` (a JWT or an `otx_` token). */
function callerFor(cp: ControlPlane, credential: string): Caller {
  return async (method, path, body) => {
    const res = await fetch(`http://127.0.0.1:${cp.publicPort}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${credential}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  };
}

async function login(cp: ControlPlane, email: string, password: string) {
  const res = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  return { status: res.status, json: await res.json() };
}

async function withCp(fn: (cp: ControlPlane, api: Api, dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "otx-users-" });
  // Nodes stay ready between manual heartbeats (stale after 60 s).
  const cp = await startTestCp(dir, new LogCapture(), "", 60);
  try {
    await fn(cp, await apiFor(cp), dir);
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Creates a user through the API and logs them in. */
async function userWith(cp: ControlPlane, api: Api, email: string, role: string) {
  const password = `${role}-password-1`;
  const created = await api("POST", "/v1/users", { email, password, role });
  assertEquals(created.status, 201, created.text);
  const jwt = (await login(cp, email, password)).json.access_token as string;
  return { ...created.json, password, jwt, call: callerFor(cp, jwt) };
}

Deno.test("users: the admin API creates, lists, reads, changes and deletes users", async (t) => {
  await withCp(async (cp, api) => {
    await t.step("create: one per role; bad input is 400 and changes nothing", async () => {
      for (const role of ["operator", "developer", "viewer"]) {
        const r = await api("POST", "/v1/users", {
          email: `${role}@example.com`,
          password: "password-1",
          role,
        });
        assertEquals([r.status, r.json.role, r.json.email], [201, role, `${role}@example.com`]);
        assert(!("password_hash" in r.json));
      }
      for (
        const [body, field] of [
          [{ email: "not-an-email", password: "password-1", role: "viewer" }, "email"],
          [{ email: "weak@example.com", password: "short", role: "viewer" }, "password"],
          [{ email: "r@example.com", password: "password-1", role: "root" }, "role"],
          [{ email: "x@example.com", password: "password-1", role: "viewer", admin: 1 }, ""],
        ] as const
      ) {
        const r = await api("POST", "/v1/users", body);
        assertEquals(
          [r.status, r.json.error.code],
          [400, "validation_failed"],
          JSON.stringify(body),
        );
        assertEquals(r.json.error.details.fields[0].path, field);
      }
      const dup = await api("POST", "/v1/users", {
        email: "VIEWER@example.com",
        password: "password-1",
        role: "admin",
      });
      assertEquals([dup.status, dup.json.error.code], [409, "conflict"]);
      assertEquals((await api("GET", "/v1/users")).json.items.length, 4);
    });

    await t.step("list is paginated; get by id or by email", async () => {
      const first = await api("GET", "/v1/users?limit=3");
      assertEquals(first.json.items.length, 3);
      assert(first.json.next_cursor);
      const rest = await api("GET", `/v1/users?limit=3&cursor=${first.json.next_cursor}`);
      assertEquals([rest.json.items.length, rest.json.next_cursor], [1, null]);
      const emails = [...first.json.items, ...rest.json.items].map((u: any) => u.email).sort();
      assertEquals(emails, [
        "admin@example.com",
        "developer@example.com",
        "operator@example.com",
        "viewer@example.com",
      ]);
      const byEmail = await api("GET", "/v1/users/Developer@Example.com");
      assertEquals(byEmail.json.role, "developer");
      const byId = await api("GET", `/v1/users/${byEmail.json.id}`);
      assertEquals(byId.json, byEmail.json);
      assertEquals((await api("GET", "/v1/users/nobody@example.com")).status, 404);
      assertEquals((await api("GET", "/v1/users/not-a-ref")).json.error.code, "validation_failed");
    });

    await t.step("set-role takes effect on the caller's next request", async () => {
      const v = await login(cp, "viewer@example.com", "password-1");
      const viewer = callerFor(cp, v.json.access_token);
      assertEquals((await viewer("GET", "/v1/users")).status, 403);
      const r = await api("PUT", "/v1/users/viewer@example.com/role", { role: "admin" });
      assertEquals([r.status, r.json.role], [200, "admin"]);
      assertEquals((await viewer("GET", "/v1/users")).status, 200, "same JWT, new role");
      const bad = await api("PUT", "/v1/users/viewer@example.com/role", { role: "god" });
      assertEquals(bad.json.error.code, "validation_failed");
      await api("PUT", "/v1/users/viewer@example.com/role", { role: "viewer" });
      assertEquals((await viewer("GET", "/v1/users")).status, 403);
    });

    await t.step("reset-password: the old password stops working", async () => {
      const r = await api("PUT", "/v1/users/operator@example.com/password", {
        password: "a-new-password",
      });
      assertEquals(r.status, 204);
      assertEquals((await login(cp, "operator@example.com", "password-1")).status, 401);
      assertEquals((await login(cp, "operator@example.com", "a-new-password")).status, 200);
      const weak = await api("PUT", "/v1/users/operator@example.com/password", { password: "x" });
      assertEquals(weak.json.error.code, "validation_failed");
    });

    await t.step("the last admin can be neither demoted nor deleted", async () => {
      const demote = await api("PUT", `/v1/users/${ADMIN.email}/role`, { role: "operator" });
      assertEquals([demote.status, demote.json.error.code], [409, "conflict"]);
      assertStringIncludes(demote.json.error.message, "last admin");
      const del = await api("DELETE", `/v1/users/${ADMIN.email}`);
      assertEquals([del.status, del.json.error.code], [409, "conflict"]);
      assertEquals((await api("GET", `/v1/users/${ADMIN.email}`)).json.role, "admin");
    });

    await t.step("two admins demoting each other at once: one stays admin", async () => {
      const second = await userWith(cp, api, "second@example.com", "admin");
      const [a, b] = await Promise.all([
        api("PUT", "/v1/users/second@example.com/role", { role: "viewer" }),
        second.call("PUT", `/v1/users/${ADMIN.email}/role`, { role: "viewer" }),
      ]);
      // One wins; the other is refused: 409 (the last admin) or, when the winner demoted it
      // before its request was authorized, 403 (no longer an admin).
      const [won, lost] = [a, b].sort((x, y) => x.status - y.status);
      assertEquals(won.status, 200, JSON.stringify([a.json, b.json]));
      assert([403, 409].includes(lost.status), JSON.stringify([a.json, b.json]));
      const users = await rangeAll<UserRecord>(cp.ctx.store, keys.users);
      const admins = users.filter((u) => u.value.role === "admin").map((u) => u.value.email);
      assertEquals(admins.length, 1, String(admins));
      // Back to the bootstrap admin alone for the next steps.
      if (admins[0] !== ADMIN.email) {
        await second.call("PUT", `/v1/users/${ADMIN.email}/role`, { role: "admin" });
      }
      assertEquals((await api("DELETE", "/v1/users/second@example.com")).status, 204);
    });

    await t.step(
      "delete: the user's JWT and API tokens stop working, the email is free",
      async () => {
        const dev = await login(cp, "developer@example.com", "password-1");
        const devCall = callerFor(cp, dev.json.access_token);
        const tok = await devCall("POST", "/v1/users/me/api-tokens", { name: "ci" });
        const viaToken = callerFor(cp, tok.json.plaintext_token);
        assertEquals((await viaToken("GET", "/v1/users/me")).status, 200);
        assertEquals((await api("DELETE", "/v1/users/developer@example.com")).status, 204);
        assertEquals((await devCall("GET", "/v1/users/me")).status, 401);
        assertEquals((await viaToken("GET", "/v1/users/me")).status, 401);
        assertEquals((await api("GET", "/v1/users/developer@example.com")).status, 404);
        const again = await api("POST", "/v1/users", {
          email: "developer@example.com",
          password: "password-2",
          role: "developer",
        });
        assertEquals(again.status, 201);
      },
    );
  });
});

Deno.test("users: one's own account — password and API tokens", async (t) => {
  await withCp(async (cp, api) => {
    const dev = await userWith(cp, api, "dev@example.com", "developer");
    await t.step("me, and a password change that needs the current password", async () => {
      assertEquals((await dev.call("GET", "/v1/users/me")).json.email, "dev@example.com");
      const wrong = await dev.call("PUT", "/v1/users/me/password", {
        current_password: "nope",
        new_password: "another-password",
      });
      assertEquals([wrong.status, wrong.json.error.code], [403, "permission_denied"]);
      const weak = await dev.call("PUT", "/v1/users/me/password", {
        current_password: dev.password,
        new_password: "short",
      });
      assertEquals(weak.json.error.code, "validation_failed");
      const ok = await dev.call("PUT", "/v1/users/me/password", {
        current_password: dev.password,
        new_password: "another-password",
      });
      assertEquals(ok.status, 204);
      assertEquals((await login(cp, "dev@example.com", "another-password")).status, 200);
      assertEquals((await login(cp, "dev@example.com", dev.password)).status, 401);
    });

    await t.step("tokens: plaintext once, listed without it, revoked by id", async () => {
      const made = await dev.call("POST", "/v1/users/me/api-tokens", {
        name: "laptop",
        description: "my laptop",
        ttl_seconds: 3600,
      });
      assertEquals(made.status, 201);
      assert(made.json.plaintext_token.startsWith("otx_"));
      const list = await dev.call("GET", "/v1/users/me/api-tokens");
      assertEquals(list.json.items.length, 1);
      assertEquals(list.json.items[0].name, "laptop");
      assert(!JSON.stringify(list.json).includes(made.json.plaintext_token));
      const tokenCall = callerFor(cp, made.json.plaintext_token);
      assertEquals((await tokenCall("GET", "/v1/vms")).status, 200);
      // The admin sees and revokes it.
      const seen = await api("GET", "/v1/users/dev@example.com/api-tokens");
      assertEquals(seen.json.items.map((x: any) => x.id), [made.json.id]);
      const revoke = await api("DELETE", `/v1/users/dev@example.com/api-tokens/${made.json.id}`);
      assertEquals(revoke.status, 204);
      assertEquals((await tokenCall("GET", "/v1/vms")).status, 401);
      // Someone else's token cannot be revoked through /me.
      const other = await api("POST", "/v1/users/me/api-tokens", { name: "admin-token" });
      const cross = await dev.call("DELETE", `/v1/users/me/api-tokens/${other.json.id}`);
      assertEquals(cross.status, 404);
      assertEquals((await dev.call("GET", "/v1/users/admin@example.com/api-tokens")).status, 403);
    });

    await t.step("the token in use revokes itself (config remove); a JWT cannot", async () => {
      const made = await dev.call("POST", "/v1/users/me/api-tokens", { name: "cli" });
      const tokenCall = callerFor(cp, made.json.plaintext_token);
      assertEquals((await tokenCall("DELETE", "/v1/users/me/api-tokens/current")).status, 204);
      assertEquals((await tokenCall("GET", "/v1/users/me")).status, 401);
      const jwt = await dev.call("DELETE", "/v1/users/me/api-tokens/current");
      assertEquals([jwt.status, jwt.json.error.code], [409, "conflict"]);
    });
  });
});

Deno.test("ownership: a developer changes only their own VMs; operators and admins every VM", async (t) => {
  await withCp(async (cp, api) => {
    const agent = new FakeAgent(cp, "node-a");
    try {
      await agent.bootstrap();
      await agent.heartbeat();
      const alice = await userWith(cp, api, "alice@example.com", "developer");
      const bob = await userWith(cp, api, "bob@example.com", "developer");
      const op = await userWith(cp, api, "op@example.com", "operator");
      const viewer = await userWith(cp, api, "viewer@example.com", "viewer");
      const vm = (name: string) => ({
        name,
        image_url: "http://127.0.0.1:1/images/img.raw",
        architecture: "amd64",
        memory_mb: 128,
      });
      const running = (name: string) =>
        until(`${name} running`, async () => {
          const v = (await api("GET", `/v1/vms/${name}`)).json;
          return v.status === "running" ? v : null;
        });

      await t.step("the creator owns the VM", async () => {
        assertEquals((await alice.call("POST", "/v1/vms", vm("alices"))).status, 202);
        const v = await running("alices");
        assertEquals(v.owner_id, alice.id);
      });

      await t.step("another developer: reads yes, changes no (403 permission_denied)", async () => {
        assertEquals((await bob.call("GET", "/v1/vms/alices")).status, 200);
        assertEquals((await bob.call("GET", "/v1/vms")).json.items.length, 1);
        for (
          const [method, path] of [
            ["POST", "/v1/vms/alices/stop"],
            ["POST", "/v1/vms/alices/reboot"],
            ["POST", "/v1/vms/alices/console"],
            ["DELETE", "/v1/vms/alices"],
          ]
        ) {
          const r = await bob.call(method, path);
          assertEquals([r.status, r.json.error.code], [403, "permission_denied"], path);
          assertEquals(r.json.error.details.owner_id, alice.id);
        }
        assertEquals((await api("GET", "/v1/vms/alices")).json.status, "running", "unchanged");
        assertEquals((await viewer.call("POST", "/v1/vms/alices/stop")).status, 403);
      });

      await t.step("the owner changes it; an operator and an admin change anyone's", async () => {
        assertEquals((await alice.call("POST", "/v1/vms/alices/console")).status, 201);
        assertEquals((await alice.call("POST", "/v1/vms/alices/stop")).status, 202);
        // Past the ownership check: the operator meets the stop in flight, not a 403.
        const busy = await op.call("POST", "/v1/vms/alices/reboot");
        assertEquals([busy.status, busy.json.error.code], [409, "vm_busy"]);
        assertEquals((await bob.call("POST", "/v1/vms", vm("bobs"))).status, 202);
        await running("bobs");
        assertEquals((await op.call("DELETE", "/v1/vms/bobs")).status, 202);
        assertEquals((await api("DELETE", "/v1/vms/alices")).status, 202);
      });
    } finally {
      await agent.close();
    }
  });
});
