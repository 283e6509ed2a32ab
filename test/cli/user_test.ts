/**
 * `otherix user …`, `otherix whoami` and `otherix audit list` through `run()` against a real
 * in-process control plane (real HTTP, real store): the lines each command prints, the
 * refusals as `api_error`, and the confirmation rule of `user delete`.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { fakeIo, type FakeIoOptions } from "./fixtures.ts";
import { LogCapture, startTestCp } from "../cp/fixtures.ts";

async function adminToken(
  cp: ControlPlane,
  email = "admin@example.com",
  password = "admin-password",
) {
  const res = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  return (await res.json()).access_token as string;
}

/** Runs the CLI against `cp` with `token`. */
function cli(cp: ControlPlane, token: string, opts: FakeIoOptions = {}) {
  return async (...args: string[]) => {
    const io = fakeIo({
      ...opts,
      env: {
        OTHERIX_SERVER: `http://127.0.0.1:${cp.publicPort}`,
        OTHERIX_API_TOKEN: token,
        ...opts.env,
      },
    });
    const code = await run(args, io);
    return { code, stdout: io.stdout, stderr: io.stderr, prompts: io.prompts };
  };
}

Deno.test("cli user: create, list, get, set-role, reset-password, delete; whoami; audit list", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-users-" });
  const cp = await startTestCp(dir, new LogCapture());
  try {
    const admin = cli(cp, await adminToken(cp));
    await t.step("whoami", async () => {
      const r = await admin("whoami");
      assertEquals(r.code, 0, r.stderr);
      assertMatch(
        r.stdout,
        new RegExp(
          `^email: admin@example.com\nrole: admin\nid: [0-9a-f-]{36}\nserver: http://127.0.0.1:${cp.publicPort}\n$`,
        ),
      );
      const json = JSON.parse((await admin("whoami", "-o", "json")).stdout);
      assertEquals([json.email, json.role], ["admin@example.com", "admin"]);
    });

    await t.step(
      "user create: --password, $OTHERIX_USER_PASSWORD, or a prompt on a TTY",
      async () => {
        const a = await admin(
          "user",
          "create",
          "dev@example.com",
          "--role",
          "developer",
          "--password",
          "dev-password",
        );
        assertEquals(a.code, 0, a.stderr);
        assertMatch(
          a.stdout,
          /^id: \S+\nemail: dev@example.com\nrole: developer\ncreated_at: \S+\n$/,
        );
        const viaEnv = await cli(cp, await adminToken(cp), {
          env: { OTHERIX_USER_PASSWORD: "viewer-password" },
        })("user", "create", "viewer@example.com", "--role", "viewer");
        assertEquals(viaEnv.code, 0, viaEnv.stderr);
        const prompted = await cli(cp, await adminToken(cp), {
          tty: true,
          answers: ["op-password-1", "op-password-1"],
        })("user", "create", "op@example.com", "--role", "operator");
        assertEquals(prompted.code, 0, prompted.stderr);
        assertEquals(prompted.prompts, [
          "New password for op@example.com: ",
          "Repeat the password: ",
        ]);
        const noTty = await admin("user", "create", "x@example.com", "--role", "viewer");
        assertEquals(noTty.code, 1);
        assertStringIncludes(noTty.stderr, "missing --password (or $OTHERIX_USER_PASSWORD)");
      },
    );

    await t.step("bad input is the server's validation_failed and creates nothing", async () => {
      for (
        const [args, field] of [
          [["not-an-email", "--role", "viewer", "--password", "password-1"], "email"],
          [["weak@example.com", "--role", "viewer", "--password", "short"], "password"],
          [["r@example.com", "--role", "root", "--password", "password-1"], "role"],
        ]
      ) {
        const r = await admin("user", "create", ...args);
        assertEquals(r.code, 1);
        assertMatch(
          r.stderr,
          new RegExp(`^api_error: validation_failed: invalid request body: ${field}: `),
        );
      }
      const dup = await admin(
        "user",
        "create",
        "dev@example.com",
        "--role",
        "admin",
        "--password",
        "password-1",
      );
      assertEquals(dup.stderr, "api_error: conflict: a user with email dev@example.com exists\n");
    });

    await t.step("user list and get", async () => {
      const list = await admin("user", "list");
      assertEquals(list.code, 0, list.stderr);
      const lines = list.stdout.trim().split("\n");
      assertMatch(lines[0], /^ID\s+EMAIL\s+ROLE\s+CREATED$/);
      assertEquals(lines.length, 5);
      assert(lines.some((l) => /\sdev@example.com\s+developer\s/.test(l)));
      const page = await admin("user", "list", "--limit", "2");
      assertStringIncludes(page.stderr, "next page: --cursor ");
      const get = await admin("user", "get", "op@example.com");
      assertMatch(get.stdout, /^id: \S+\nemail: op@example.com\nrole: operator\n/);
      const missing = await admin("user", "get", "nobody@example.com");
      assertEquals(missing.stderr, "api_error: not_found: user nobody@example.com not found\n");
    });

    await t.step("set-role, reset-password", async () => {
      const r = await admin("user", "set-role", "dev@example.com", "operator");
      assertEquals(r.stdout, "user dev@example.com role: operator\n");
      const me = await cli(cp, await adminToken(cp, "dev@example.com", "dev-password"))("whoami");
      assertStringIncludes(me.stdout, "role: operator\n");
      const reset = await admin(
        "user",
        "reset-password",
        "dev@example.com",
        "--password",
        "new-dev-password",
      );
      assertEquals(reset.stdout, "password reset: dev@example.com\n");
      assertEquals(await adminToken(cp, "dev@example.com", "dev-password"), undefined);
      assert(await adminToken(cp, "dev@example.com", "new-dev-password"));
    });

    await t.step("the last admin: neither demoted nor deleted", async () => {
      const demote = await admin("user", "set-role", "admin@example.com", "viewer");
      assertEquals(demote.code, 1);
      assertMatch(demote.stderr, /^api_error: conflict: admin@example.com is the last admin/);
      const del = await admin("user", "delete", "admin@example.com", "--force");
      assertMatch(del.stderr, /^api_error: conflict: admin@example.com is the last admin/);
    });

    await t.step("delete asks unless --force; refuses without a terminal", async () => {
      const noTty = await admin("user", "delete", "viewer@example.com");
      assertEquals(noTty.code, 1);
      assertStringIncludes(noTty.stderr, "(pass --force)");
      const no = await cli(cp, await adminToken(cp), { tty: true, answers: ["n"] })(
        "user",
        "delete",
        "viewer@example.com",
      );
      assertEquals(no.code, 1);
      assertEquals((await admin("user", "get", "viewer@example.com")).code, 0);
      const yes = await cli(cp, await adminToken(cp), { tty: true, answers: ["y"] })(
        "user",
        "delete",
        "viewer@example.com",
      );
      assertEquals([yes.code, yes.stdout], [0, "user deleted: viewer@example.com\n"]);
      assertEquals((await admin("user", "get", "viewer@example.com")).code, 1);
    });

    await t.step("a non-admin gets permission_denied", async () => {
      const op = cli(cp, await adminToken(cp, "op@example.com", "op-password-1"));
      const r = await op("user", "list");
      assertEquals(
        r.stderr,
        "api_error: permission_denied: role operator lacks permission user:manage\n",
      );
    });

    await t.step("audit list: newest first, filtered", async () => {
      const r = await admin("audit", "list", "--action", "user.delete");
      assertEquals(r.code, 0, r.stderr);
      const lines = r.stdout.trim().split("\n");
      assertMatch(lines[0], /^TIME\s+USER\s+ACTION\s+TARGET\s+RESULT\s+STATUS\s+SOURCE$/);
      assertMatch(
        lines[1],
        /\sadmin@example.com\s+user.delete\s+viewer@example.com\s+success\s+204\s+127.0.0.1$/,
      );
      assertMatch(
        lines[2],
        /\sadmin@example.com\s+user.delete\s+admin@example.com\s+failure \(conflict\)\s+409\s+127.0.0.1$/,
      );
      const json = JSON.parse(
        (await admin("audit", "list", "--user", "op@example.com", "-o", "json")).stdout,
      );
      assertEquals(json.items.map((e: { action: string }) => e.action), ["auth.login"]);
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
