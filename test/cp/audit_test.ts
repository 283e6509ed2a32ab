/**
 * The audit log (cp/audit/): every mutating call and every failed login recorded by one
 * middleware, read back through `GET /v1/audit` (admin, paginated, filtered), and kept within
 * its count and age bounds.
 */
import { assert, assertEquals } from "../assert.ts";
import { AUDIT_PREFIX, auditKey, AuditLog, PRUNE_EVERY, pruneAudit } from "../../cp/audit/log.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { rangeAll } from "../../cp/store/store.ts";
import type { AuditEntry } from "../../shared/api/audit.ts";
import { apiFor, LogCapture, startTestCp } from "./fixtures.ts";

Deno.test("audit: mutating calls and failed logins are recorded, reads are not", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-audit-" });
  const cp = await startTestCp(dir, new LogCapture());
  const base = `http://127.0.0.1:${cp.publicPort}`;
  const login = (email: string, password: string) =>
    fetch(`${base}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password }),
    }).then((r) => r.body?.cancel());
  try {
    const api = await apiFor(cp); // one successful login
    await t.step("a day of calls", async () => {
      await login("admin@example.com", "wrong-password");
      await login("nobody@example.com", "secret-guess");
      assertEquals((await api("GET", "/v1/vms")).status, 200);
      assertEquals(
        (await api("POST", "/v1/users", {
          email: "dev@example.com",
          password: "dev-password-1",
          role: "developer",
        })).status,
        201,
      );
      assertEquals(
        (await api("PUT", "/v1/users/dev@example.com/role", { role: "viewer" })).status,
        200,
      );
      assertEquals((await api("DELETE", "/v1/vms/ghost")).status, 404);
      assertEquals((await api("POST", "/v1/users", { email: "bad" })).status, 400);
    });

    await t.step("GET /v1/audit: newest first, who/what/target/result/source/time", async () => {
      const res = await api("GET", "/v1/audit");
      assertEquals(res.status, 200);
      const rows = res.json.items.map((e: AuditEntry) => [
        e.user_email,
        e.action,
        e.target,
        e.result,
        e.status,
        e.code,
      ]);
      assertEquals(rows, [
        ["admin@example.com", "user.create", null, "failure", 400, "validation_failed"],
        ["admin@example.com", "vm.delete", "ghost", "failure", 404, "vm_not_found"],
        ["admin@example.com", "user.set_role", "dev@example.com", "success", 200, null],
        ["admin@example.com", "user.create", "dev@example.com", "success", 201, null],
        ["nobody@example.com", "auth.login", null, "denied", 401, "unauthenticated"],
        ["admin@example.com", "auth.login", null, "denied", 401, "unauthenticated"],
        ["admin@example.com", "auth.login", null, "success", 200, null],
      ]);
      for (const e of res.json.items as AuditEntry[]) {
        assertEquals(e.source, "127.0.0.1");
        assert(Math.abs(Date.parse(e.at) - Date.now()) < 60_000, e.at);
      }
      const text = JSON.stringify(res.json);
      for (const secret of ["wrong-password", "secret-guess", "dev-password-1"]) {
        assert(!text.includes(secret), `the audit log holds ${secret}`);
      }
      assertEquals(res.json.items[3].user_id, (await api("GET", "/v1/users/me")).json.id);
    });

    await t.step("filters by user and action, and pages", async () => {
      const logins = await api("GET", "/v1/audit?action=auth.login");
      assertEquals(logins.json.items.length, 3);
      const nobody = await api("GET", "/v1/audit?user=NOBODY@example.com");
      assertEquals(nobody.json.items.map((e: AuditEntry) => e.action), ["auth.login"]);
      const both = await api("GET", "/v1/audit?user=admin@example.com&action=user.create");
      assertEquals(both.json.items.length, 2);
      const p1 = await api("GET", "/v1/audit?limit=4");
      const p2 = await api("GET", `/v1/audit?limit=4&cursor=${p1.json.next_cursor}`);
      assertEquals([p1.json.items.length, p2.json.items.length, p2.json.next_cursor], [4, 3, null]);
      // Reads (these GET /v1/audit calls among them) are not recorded.
      const all = await rangeAll<AuditEntry>(cp.ctx.store, AUDIT_PREFIX);
      assert(all.every((kv) => kv.value.method !== "GET"));
    });

    await t.step("only admins read it", async () => {
      const dev = await fetch(`${base}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "dev@example.com", password: "dev-password-1" }),
      }).then((r) => r.json());
      const res = await fetch(`${base}/v1/audit`, {
        headers: { authorization: `Bearer ${dev.access_token}` },
      });
      assertEquals([res.status, (await res.json()).error.code], [403, "permission_denied"]);
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

const entry = (at: number, i: number): AuditEntry => ({
  id: `e${i}`,
  at: new Date(at).toISOString(),
  user_id: null,
  user_email: null,
  action: "vm.create",
  target: `vm-${i}`,
  result: "success",
  status: 202,
  code: null,
  method: "POST",
  path: "/v1/vms",
  source: "127.0.0.1",
});

Deno.test("audit: retention by count and by age", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-audit-ret-" });
  const store = await openKvStore(`${dir}/store.kv`);
  const day = 24 * 3600 * 1000;
  const now = Date.parse("2030-06-01T00:00:00Z");
  try {
    await t.step("pruneAudit keeps the newest maxEntries, none older than maxAgeDays", async () => {
      // 40 entries a day apart (oldest 39 days ago), then 30 within the last hour.
      for (let i = 0; i < 40; i++) {
        await store.put(auditKey(now - i * day, `d${i}`), entry(now - i * day, i));
      }
      for (let i = 0; i < 30; i++) {
        await store.put(auditKey(now - i * 1000, `h${i}`), entry(now - i * 1000, 100 + i));
      }
      assertEquals(
        await pruneAudit(store, { maxEntries: 1000, maxAgeDays: 10 }, new Date(now)),
        29,
      );
      const left = await rangeAll<AuditEntry>(store, AUDIT_PREFIX);
      assert(left.every((kv) => now - Date.parse(kv.value.at) <= 10 * day));
      assertEquals(left.length, 41);
      await pruneAudit(store, { maxEntries: 25, maxAgeDays: 10 }, new Date(now));
      const kept = await rangeAll<AuditEntry>(store, AUDIT_PREFIX);
      assertEquals(kept.length, 25);
      // The newest ones stayed.
      const newest = kept.map((kv) => Date.parse(kv.value.at)).sort((a, b) => b - a);
      assertEquals(newest[0], now);
      assert(newest.every((t) => now - t < 30_000));
    });

    await t.step("the log prunes itself every PRUNE_EVERY writes", async () => {
      const errors: unknown[] = [];
      const log = new AuditLog(store, { maxEntries: 50, maxAgeDays: 90 }, (e) => errors.push(e));
      for (let i = 0; i < PRUNE_EVERY; i++) await log.record(entry(now + 1000 + i, 1000 + i));
      await log.prune(new Date(now + 10_000)); // waits for the prune the last write started
      assertEquals((await rangeAll(store, AUDIT_PREFIX)).length, 50);
      assertEquals(errors, []);
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
