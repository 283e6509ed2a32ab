/**
 * Process-level tests: the real CLI (`deno run` + `permissionFlags("otherix")` + `cli/main.ts`)
 * against a fake `otherix-api` on 127.0.0.1:0 serving canned, schema-valid JSON.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import {
  closedPort,
  envelope,
  json,
  runCli,
  startFakeApi,
  taskFixture,
  uuid,
  vmFixture,
} from "./fixtures.ts";

/** A temp HOME for one test, removed afterwards. */
async function withHome(fn: (home: string) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix: "otherix-cli-" });
  try {
    await fn(home);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

const LOGIN = {
  access_token: "jwt-abc",
  token_type: "Bearer",
  expires_in: 900,
  expires_at: "2026-05-12T20:15:00.000Z",
};
const MINTED = "otx_0123456789abcdefghijklmnopqrstuv";

Deno.test("process: config add cluster logs in, mints a token and writes a 0600 config", async () => {
  const api = startFakeApi({
    "POST /v1/auth/login": () => json(LOGIN),
    "POST /v1/users/me/api-tokens": () =>
      json({
        id: uuid(4),
        name: "otherix-cli@host",
        description: null,
        created_at: "2026-05-12T20:00:00.000Z",
        expires_at: null,
        plaintext_token: MINTED,
      }, 201),
  });
  try {
    await withHome(async (home) => {
      const r = await runCli([
        "config",
        "add",
        "cluster",
        "--name",
        "production",
        "--server",
        api.url,
        "--login",
        "admin@otherix.local",
        "--password",
        "correct-horse-battery-staple",
      ], { home });
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, `cluster added: name=production server=${api.url} current=true\n`);
      const path = `${home}/.otherix/config`;
      assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
      assertEquals((await Deno.stat(`${home}/.otherix`)).mode! & 0o777, 0o700);
      const text = await Deno.readTextFile(path);
      assertStringIncludes(text, `token: ${MINTED}`);
      assertStringIncludes(text, "current-cluster: production");
      assert(!text.includes("correct-horse"), "password must not be stored");
      assertEquals(api.seen[1].auth, "Bearer jwt-abc");
      assertMatch(String((api.seen[1].body as { name: string }).name), /^otherix-cli@.+/);

      // Same name again without --force fails before any request.
      const before = api.seen.length;
      const dup = await runCli([
        "config",
        "add",
        "cluster",
        "--name",
        "production",
        "--server",
        api.url,
        "--login",
        "a@b.c",
        "--password",
        "x",
      ], { home });
      assertEquals(dup.code, 1);
      assertStringIncludes(dup.stderr, 'error: cluster "production" already exists');
      assertEquals(api.seen.length, before);

      // Values from env (OTHERIX_SERVER / OTHERIX_LOGIN / OTHERIX_PASSWORD), --no-use.
      const viaEnv = await runCli(["config", "add", "cluster", "--name", "lab", "--no-use"], {
        home,
        env: { OTHERIX_SERVER: api.url, OTHERIX_LOGIN: "a@b.c", OTHERIX_PASSWORD: "pw" },
      });
      assertEquals(viaEnv.code, 0, viaEnv.stderr);
      assertEquals(viaEnv.stdout, `cluster added: name=lab server=${api.url} current=false\n`);

      const list = await runCli(["config", "list"], { home });
      assertEquals(
        list.stdout,
        "NAME         SERVER" + " ".repeat(api.url.length - 6 + 3) + "CURRENT\n" +
          `production   ${api.url}   *\n` +
          `lab          ${api.url}\n`,
      );
      const use = await runCli(["config", "use", "lab"], { home });
      assertEquals(use.stdout, "current cluster: lab\n");
      const show = await runCli(["config", "show"], { home });
      assertStringIncludes(show.stdout, "name: lab\n");
      assertStringIncludes(show.stdout, "token: otx_0123…(masked)\n");
      const rm = await runCli(["config", "remove", "production"], { home });
      assertEquals(rm.code, 1);
      assertStringIncludes(rm.stderr, "--force");
      const rmf = await runCli(["config", "remove", "production", "--force"], { home });
      assertEquals([rmf.code, rmf.stdout], [0, "cluster removed: production\n"]);
    });
  } finally {
    await api.close();
  }
});

Deno.test("process: vm list (all pages) table, --show-ids, -o json; vm get -o json", async () => {
  const a = vmFixture({
    id: uuid(1),
    name: "demo-vm",
    created_at: new Date(Date.now() - 300_000).toISOString(),
  });
  const b = vmFixture({
    id: uuid(2),
    name: "pinned-vm",
    pool: "fast-ssd",
    node: "node-b",
    status: "creating",
    created_at: new Date(Date.now() - 120_000).toISOString(),
  });
  const api = startFakeApi({
    "GET /v1/vms": (_req, seen) =>
      seen.query.get("cursor") === "page2"
        ? json({ items: [b], next_cursor: null })
        : json({ items: [a], next_cursor: "page2" }),
    "GET /v1/vms/*": () => json(a),
  });
  try {
    await withHome(async (home) => {
      const env = { OTHERIX_SERVER: api.url, OTHERIX_API_TOKEN: "otx_env" };
      const r = await runCli(["vm", "list"], { home, env });
      assertEquals(r.code, 0, r.stderr);
      assertEquals(
        r.stdout,
        "NAME        STATUS     NODE     POOL       IMAGE              AGE\n" +
          "demo-vm     running    node-a   default    otherix-test.img   5m\n" +
          "pinned-vm   creating   node-b   fast-ssd   otherix-test.img   2m\n",
      );
      const ids = await runCli(["vm", "list", "--show-ids"], { home, env });
      assertMatch(ids.stdout.split("\n")[0], /^ID\s+NAME\s+STATUS/);
      assertMatch(ids.stdout.split("\n")[1], new RegExp(`^${uuid(1)}\\s+demo-vm\\s+running`));
      const j = await runCli(["vm", "list", "-o", "json"], { home, env });
      assertEquals(JSON.parse(j.stdout).items.map((v: { name: string }) => v.name), [
        "demo-vm",
        "pinned-vm",
      ]);

      const g = await runCli(["vm", "get", "demo-vm", "-o", "json"], { home, env });
      assertEquals(g.code, 0, g.stderr);
      assertEquals(JSON.parse(g.stdout), a);
      assertStringIncludes(g.stdout, '\n  "name": "demo-vm",\n'); // pretty, 2 spaces
    });
  } finally {
    await api.close();
  }
});

Deno.test("process: vm create --wait succeeds, and a failed task is api_error exit 1", async () => {
  let polls = 0;
  const api = startFakeApi({
    "POST /v1/vms": (_req, seen) =>
      json(
        taskFixture({
          id: (seen.body as { name: string }).name === "bad-vm" ? uuid(61) : uuid(60),
        }),
        202,
      ),
    [`GET /v1/tasks/${uuid(60)}`]: () =>
      json(taskFixture({ id: uuid(60), status: ++polls < 2 ? "running" : "succeeded" })),
    [`GET /v1/tasks/${uuid(61)}`]: () =>
      json(taskFixture({
        id: uuid(61),
        status: "failed",
        error: {
          code: "checksum_mismatch",
          message: "image sha256 is 1234…, expected abcd…",
        },
      })),
  });
  try {
    await withHome(async (home) => {
      const env = { OTHERIX_SERVER: api.url, OTHERIX_API_TOKEN: "otx_env" };
      const ok = await runCli([
        "vm",
        "create",
        "demo-vm",
        "--image-url",
        "http://127.0.0.1:1/img/test.img",
        "--vcpus",
        "2",
        "--memory-mb",
        "512",
        "--wait",
      ], { home, env });
      assertEquals(ok.code, 0, ok.stderr);
      assertEquals(
        ok.stdout,
        `created task=${uuid(60)} status=pending\nvm running task=${uuid(60)}\n`,
      );
      assertStringIncludes(ok.stderr, `task=${uuid(60)} status=succeeded`); // non-TTY progress
      const body = api.seen[0].body as Record<string, unknown>;
      assertEquals([body.name, body.architecture, body.vcpus, body.memory_mb], [
        "demo-vm",
        "amd64",
        2,
        512,
      ]);

      const bad = await runCli([
        "vm",
        "create",
        "bad-vm",
        "--image-url",
        "http://127.0.0.1:1/img/test.img",
        "--image-sha256",
        "ab".repeat(32),
        "--wait",
      ], { home, env });
      assertEquals(bad.code, 1);
      assertStringIncludes(bad.stdout, `created task=${uuid(61)} status=pending\n`);
      assertStringIncludes(
        bad.stderr,
        "api_error: checksum_mismatch: image sha256 is 1234…, expected abcd…\n",
      );
    });
  } finally {
    await api.close();
  }
});

Deno.test("process: error classification — 404 envelope, refused, malformed, usage", async () => {
  const api = startFakeApi({
    "GET /v1/vms/*": () => envelope(404, "vm_not_found", 'vm "ghost" not found'),
    "GET /v1/nodes": () => json({ items: [{ name: "half a node" }], next_cursor: null }),
  });
  try {
    await withHome(async (home) => {
      const env = { OTHERIX_SERVER: api.url, OTHERIX_API_TOKEN: "otx_env" };
      const nf = await runCli(["vm", "get", "ghost"], { home, env });
      assertEquals(nf.code, 1);
      assertEquals(nf.stderr, 'api_error: vm_not_found: vm "ghost" not found\n');
      assertEquals(nf.stdout, "");

      const refused = await runCli(["vm", "list"], {
        home,
        env: { ...env, OTHERIX_SERVER: `http://127.0.0.1:${closedPort()}` },
      });
      assertEquals(refused.code, 1);
      assertMatch(refused.stderr, /^connection_refused: /);

      const malformed = await runCli(["node", "list"], { home, env });
      assertEquals(malformed.code, 1);
      assertMatch(malformed.stderr, /^request_failed: unexpected response from GET \/v1\/nodes: /);

      const usage = await runCli([
        "vm",
        "create",
        "x",
        "--image-url",
        "http://a/b",
        "--vcpus",
        "two",
      ], {
        home,
        env,
      });
      assertEquals(usage.code, 1);
      assertStringIncludes(usage.stderr, "--vcpus <n>' argument 'two' is invalid");

      const noForce = await runCli(["vm", "delete", "demo-vm"], { home, env });
      assertEquals(noForce.code, 1);
      assertStringIncludes(noForce.stderr, "pass --force");
    });
  } finally {
    await api.close();
  }
});

Deno.test("process: token precedence — --token > OTHERIX_API_TOKEN > config", async () => {
  const api = startFakeApi({
    "GET /v1/vms": () => json({ items: [], next_cursor: null }),
  });
  try {
    await withHome(async (home) => {
      const cfg = `${home}/cfg.yaml`;
      await Deno.writeTextFile(
        cfg,
        `apiVersion: otherix/v1\nkind: Config\nclusters:\n- name: lab\n  server: ${api.url}\n  token: otx_from_config\ncurrent-cluster: lab\n`,
      );
      const env = { OTHERIX_CONFIG: cfg };
      const fromConfig = await runCli(["vm", "list"], { home, env });
      assertEquals(fromConfig.code, 0, fromConfig.stderr);
      assertEquals(fromConfig.stdout, "NAME   STATUS   NODE   POOL   IMAGE   AGE\n");
      const fromEnv = await runCli(["vm", "list"], {
        home,
        env: { ...env, OTHERIX_API_TOKEN: "otx_from_env" },
      });
      assertEquals(fromEnv.code, 0, fromEnv.stderr);
      const fromFlag = await runCli(["--token", "otx_from_flag", "vm", "list"], {
        home,
        env: { ...env, OTHERIX_API_TOKEN: "otx_from_env" },
      });
      assertEquals(fromFlag.code, 0, fromFlag.stderr);
      // --config flag beats $OTHERIX_CONFIG (which points nowhere here).
      const viaFlag = await runCli(["--config", cfg, "vm", "list"], {
        home,
        env: { OTHERIX_CONFIG: `${home}/missing` },
      });
      assertEquals(viaFlag.code, 0, viaFlag.stderr);
      assertEquals(api.seen.map((s) => s.auth), [
        "Bearer otx_from_config",
        "Bearer otx_from_env",
        "Bearer otx_from_flag",
        "Bearer otx_from_config",
      ]);
    });
  } finally {
    await api.close();
  }
});

Deno.test("process: no endpoint configured exits 1", async () => {
  await withHome(async (home) => {
    const r = await runCli(["vm", "list"], { home, env: { OTHERIX_API_TOKEN: "otx_x" } });
    assertEquals(r.code, 1);
    assertStringIncludes(r.stderr, "no endpoint configured");
    const t = await runCli(["--endpoint", "http://127.0.0.1:8080", "vm", "list"], { home });
    assertEquals(t.code, 1);
    assertStringIncludes(t.stderr, "no token configured");
  });
});
