/**
 * `otherix token create|list|revoke` and `config remove` revoking the stored token, through
 * `run()` against a real in-process control plane.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import { loadConfig } from "../../cli/config_store.ts";
import { closedPort, fakeIo, type FakeIoOptions } from "./fixtures.ts";
import { LogCapture, startTestCp } from "../cp/fixtures.ts";

Deno.test("cli token: create (shown once), list (never shown), revoke; admins see anyone's", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-tokens-" });
  const cp = await startTestCp(dir, new LogCapture());
  const server = `http://127.0.0.1:${cp.publicPort}`;
  const as = (token: string, opts: FakeIoOptions = {}) => async (...args: string[]) => {
    const io = fakeIo({ ...opts, env: { OTHERIX_SERVER: server, OTHERIX_API_TOKEN: token } });
    const code = await run(args, io);
    return { code, stdout: io.stdout, stderr: io.stderr };
  };
  const loginAs = async (email: string, password: string) =>
    (await (await fetch(`${server}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password }),
    })).json()).access_token as string;
  try {
    const admin = as(await loginAs("admin@example.com", "admin-password"));
    await admin(
      "user",
      "create",
      "ci@example.com",
      "--role",
      "developer",
      "--password",
      "ci-password",
    );
    const ci = as(await loginAs("ci@example.com", "ci-password"));
    let tokenId = "";
    let plaintext = "";

    await t.step("create prints the token once, with a warning", async () => {
      const r = await ci(
        "token",
        "create",
        "--name",
        "nightly",
        "--description",
        "CI",
        "--expires-in",
        "30d",
      );
      assertEquals(r.code, 0, r.stderr);
      const m = r.stdout.match(/^token: (otx_\S+)\nid: (\S+)\nname: nightly\nexpires_at: (\S+)\n/);
      assert(m, r.stdout);
      [, plaintext, tokenId] = m;
      const days = (Date.parse(m[3]) - Date.now()) / 86_400_000;
      assert(days > 29.9 && days < 30.1, m[3]);
      assertStringIncludes(r.stdout, "note: the token is shown once");
      assertEquals((await as(plaintext)("whoami")).stdout.split("\n")[0], "email: ci@example.com");
      const bad = await ci("token", "create", "--name", "x", "--expires-in", "10s");
      assertMatch(bad.stderr, /^api_error: validation_failed: .*ttl_seconds/);
    });

    await t.step("list never shows a token; --user is for admins", async () => {
      const r = await ci("token", "list");
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stdout, /^ID\s+NAME\s+DESCRIPTION\s+CREATED\s+EXPIRES\n/);
      assertStringIncludes(r.stdout, tokenId);
      assert(!r.stdout.includes(plaintext));
      const byAdmin = await admin("token", "list", "--user", "ci@example.com", "-o", "json");
      assertEquals(JSON.parse(byAdmin.stdout).items.map((x: { id: string }) => x.id), [tokenId]);
      const denied = await ci("token", "list", "--user", "admin@example.com");
      assertEquals(
        denied.stderr,
        "api_error: permission_denied: role developer lacks permission user:manage\n",
      );
    });

    await t.step("revoke: the token stops working; admins revoke anyone's", async () => {
      const r = await ci("token", "revoke", tokenId);
      assertEquals(r.stdout, `api token revoked: ${tokenId}\n`);
      const after = await as(plaintext)("whoami");
      assertEquals([after.code, after.stderr], [
        1,
        "api_error: unauthenticated: invalid API token\n",
      ]);
      const second = await ci("token", "create", "--name", "second", "-o", "json");
      const id2 = JSON.parse(second.stdout).id;
      const byAdmin = await admin("token", "revoke", id2, "--user", "ci@example.com");
      assertEquals(byAdmin.code, 0, byAdmin.stderr);
      assertEquals(JSON.parse((await ci("token", "list", "-o", "json")).stdout).items, []);
      const again = await ci("token", "revoke", id2);
      assertEquals(again.stderr, `api_error: not_found: api token ${id2} not found\n`);
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli config remove: revokes the stored API token on the server (best effort)", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-rm-" });
  const cp = await startTestCp(dir, new LogCapture());
  const server = `http://127.0.0.1:${cp.publicPort}`;
  const home = `${dir}/home`;
  await Deno.mkdir(home);
  const cmd = async (...args: string[]) => {
    const io = fakeIo({ env: { HOME: home } });
    const code = await run(args, io);
    return { code, stdout: io.stdout, stderr: io.stderr };
  };
  try {
    const add = async (name: string, url = server) => {
      const r = await cmd(
        "config",
        "add",
        "cluster",
        "--name",
        name,
        "--server",
        url,
        "--login",
        "admin@example.com",
        "--password",
        "admin-password",
      );
      assertEquals(r.code, 0, r.stderr);
      return (await loadConfig(`${home}/.otherix/config`)).clusters.find((c) => c.name === name)!
        .token;
    };

    await t.step("reachable: the token is revoked, then the entry removed", async () => {
      const token = await add("lab");
      const ok = await fetch(`${server}/v1/users/me`, {
        headers: { authorization: `Bearer ${token}` },
      });
      assertEquals(ok.status, 200);
      await ok.body?.cancel();
      const r = await cmd("config", "remove", "lab", "--force");
      assertEquals([r.code, r.stdout, r.stderr], [
        0,
        "server-side token revoked\ncluster removed: lab\n",
        "",
      ]);
      const gone = await fetch(`${server}/v1/users/me`, {
        headers: { authorization: `Bearer ${token}` },
      });
      assertEquals(gone.status, 401);
      await gone.body?.cancel();
    });

    await t.step("--no-revoke keeps it valid", async () => {
      const token = await add("keep");
      const r = await cmd("config", "remove", "keep", "--force", "--no-revoke");
      assertEquals(r.stdout, "cluster removed: keep\n");
      const still = await fetch(`${server}/v1/users/me`, {
        headers: { authorization: `Bearer ${token}` },
      });
      assertEquals(still.status, 200);
      await still.body?.cancel();
    });

    await t.step("unreachable: removed anyway, and said so", async () => {
      await add("away");
      const cfg = await loadConfig(`${home}/.otherix/config`);
      const entry = cfg.clusters.find((c) => c.name === "away")!;
      entry.server = `http://127.0.0.1:${closedPort()}`;
      await Deno.writeTextFile(`${home}/.otherix/config`, JSON.stringify(cfg));
      const r = await cmd("config", "remove", "away", "--force");
      assertEquals([r.code, r.stdout], [0, "cluster removed: away\n"]);
      assertMatch(
        r.stderr,
        /^warning: could not revoke the server-side token \(connection_refused: .*\); it stays valid until revoked/,
      );
      assertEquals((await loadConfig(`${home}/.otherix/config`)).clusters, []);
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
