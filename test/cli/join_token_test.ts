/**
 * `otherix node join-token create|list|revoke` as a real CLI process (the `otherix` sandbox
 * flags) against a real control plane started in-process (real store, real routes, real TLS
 * on the agent port): create prints the token once, list never does, revoke makes the token
 * unredeemable, and bad input is refused with nothing changed.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { type ControlPlane, startControlPlane } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { JOIN_TOKENS_BY_ID } from "../../cp/join_tokens.ts";
import { getUserByEmail } from "../../cp/users/service.ts";
import { permissionFlags, STANDARD_SANDBOX } from "../../scripts/permissions.ts";
import { createLogger } from "../../shared/log.ts";
import { createCsr, splitSans } from "../../shared/pki.ts";
import { createTlsClient } from "../../shared/tls.ts";

interface World {
  cp: ControlPlane;
  env: Record<string, string>;
  home: string;
  adminId: string;
  /** Runs `otherix …args`; exit code and output. */
  cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Ids in the store's join-token index. */
  indexed(): Promise<string[]>;
  /** Redeems `token` at the agent port over TLS as an agent would: HTTP status and code. */
  redeem(token: string, node: string): Promise<[number, string | null]>;
}

/** `deno run` arguments of the real `otherix` CLI under its sandbox. */
function cliArgs(args: string[]): string[] {
  return [
    "run",
    ...permissionFlags("otherix", STANDARD_SANDBOX),
    new URL("../../cli/main.ts", import.meta.url).pathname,
    ...args,
  ];
}

async function withCp(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-cli-jt-" });
  const cfg = parseApiConfig(
    `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n` +
      `store:\n  data_dir: ${dir}/data\nworkers:\n  enabled: false\n`,
  );
  const cp = await startControlPlane(cfg, createLogger("api", "error"), {
    getEnv: (n) =>
      ({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "admin@example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "admin-password",
      })[n],
    host: { hostname: "localhost", addresses: [] },
  });
  const anon = createTlsClient({ caPem: cp.ctx.pki.ca.certPem });
  try {
    const admin = (await getUserByEmail(cp.ctx.store, "admin@example.com"))!;
    const { token } = await issueAccessToken(
      cp.ctx.jwtSecret,
      { sub: admin.id, role: "admin" },
      900,
    );
    await Deno.mkdir(`${dir}/home`);
    const env = {
      HOME: `${dir}/home`,
      OTHERIX_SERVER: `http://127.0.0.1:${cp.publicPort}`,
      OTHERIX_API_TOKEN: token,
      DENO_DIR: Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`,
      DENO_NO_UPDATE_CHECK: "1",
      NO_COLOR: "1",
    };
    await fn({
      cp,
      env,
      home: `${dir}/home`,
      adminId: admin.id,
      cli: async (...args) => {
        const out = await new Deno.Command(Deno.execPath(), {
          args: cliArgs(args),
          clearEnv: true,
          env,
          stdin: "null",
        }).output();
        const dec = new TextDecoder();
        return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
      },
      indexed: async () =>
        (await cp.ctx.store.range(JOIN_TOKENS_BY_ID)).kvs.map((kv) =>
          kv.key.slice(JOIN_TOKENS_BY_ID.length)
        ).sort(),
      redeem: async (tok, node) => {
        const csr = await createCsr(node, splitSans(["127.0.0.1"]));
        const res = await fetch(`https://127.0.0.1:${cp.agentPort}/v1/nodes/bootstrap`, {
          method: "POST",
          client: anon,
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ token: tok, csr_pem: csr.csrPem }),
        });
        const body = await res.json();
        return [res.status, res.ok ? null : body.error.code];
      },
    });
  } finally {
    anon.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("cli process: node join-token create, list, revoke against a real control plane", async (t) => {
  await withCp(async (w) => {
    let first = { id: "", token: "" };
    let second = { id: "", token: "" };

    await t.step("create (text) prints the token once with its CA fingerprint", async () => {
      const r = await w.cli(
        "node",
        "join-token",
        "create",
        "--node-name",
        "node-a",
        "--ttl",
        "10m",
      );
      assertEquals(r.code, 0, r.stderr);
      const token = /^token: (otxjoin_\S+)$/m.exec(r.stdout)?.[1];
      assert(token, r.stdout);
      assertStringIncludes(r.stdout, "node: node-a\n");
      assertStringIncludes(r.stdout, "max_uses: 1\n");
      assertStringIncludes(r.stdout, `ca_fingerprint: ${w.cp.caFingerprint}\n`);
      assertStringIncludes(r.stdout, "shown once");
      const ids = await w.indexed();
      assertEquals(ids.length, 1);
      first = { id: ids[0], token };
    });

    await t.step("create -o json with --max-uses", async () => {
      const r = await w.cli(
        "node",
        "join-token",
        "create",
        "--node-name",
        "node-b",
        "--max-uses",
        "3",
        "--ttl",
        "1h",
        "-o",
        "json",
      );
      assertEquals(r.code, 0, r.stderr);
      const body = JSON.parse(r.stdout);
      assertEquals([body.node_name, body.max_uses], ["node-b", 3]);
      const left = Date.parse(body.expires_at) - Date.now();
      assert(left > 3500_000 && left <= 3600_000, `expires in ${left} ms`);
      second = { id: body.id, token: body.token };
    });

    await t.step("list: table of metadata, never a token", async () => {
      assertEquals(await w.redeem(second.token, "node-b"), [200, null]);
      const r = await w.cli("node", "join-token", "list");
      assertEquals(r.code, 0, r.stderr);
      assert(!r.stdout.includes(first.token) && !r.stdout.includes(second.token));
      assert(!r.stdout.includes("otxjoin_"), "no token in the list");
      const lines = r.stdout.trimEnd().split("\n");
      assertMatch(lines[0], /^ID\s+NODE\s+USES\s+EXPIRES\s+CREATED_BY$/);
      const row = (id: string) => lines.find((l) => l.startsWith(id))?.split(/\s{3,}/);
      assertEquals(lines.length, 3);
      const a = row(first.id)!;
      assertEquals([a[1], a[2], a[4]], ["node-a", "0/1", w.adminId]);
      assertMatch(a[3], /^in (9|10)m$/);
      const b = row(second.id)!;
      assertEquals([b[1], b[2]], ["node-b", "1/3"]);
      assertMatch(b[3], /^in (59m|1h)$/);

      const j = await w.cli("node", "join-token", "list", "-o", "json");
      assertEquals(j.code, 0, j.stderr);
      const items = JSON.parse(j.stdout).items as Record<string, unknown>[];
      assertEquals(items.map((i) => i.id).sort(), [first.id, second.id].sort());
      const bj = items.find((i) => i.id === second.id)!;
      assertEquals([bj.uses, bj.uses_left, bj.expired], [1, 2, false]);
      assert(!j.stdout.includes("otxjoin_"));
      const y = await w.cli("node", "join-token", "list", "-o", "yaml");
      assertStringIncludes(y.stdout, `node_name: node-b\n`);
    });

    await t.step("revoke: the token is gone and no longer redeems", async () => {
      const r = await w.cli("node", "join-token", "revoke", second.id);
      assertEquals([r.code, r.stdout, r.stderr], [0, `join token revoked: ${second.id}\n`, ""]);
      assertEquals(await w.redeem(second.token, "node-b"), [401, "unauthenticated"]);
      assertEquals(await w.indexed(), [first.id]);
      const again = await w.cli("node", "join-token", "revoke", second.id);
      assertEquals(again.code, 1);
      assertStringIncludes(again.stderr, `api_error: not_found: join token ${second.id} not found`);
    });

    await t.step("bad input is refused and changes nothing", async () => {
      const cases: [string[], RegExp][] = [
        [["create", "--node-name", "x", "--ttl", "10x"], /--ttl <duration>' argument '10x'/],
        [["create", "--node-name", "x", "--max-uses", "two"], /argument 'two' is invalid/],
        [
          ["create", "--node-name", "x", "--max-uses", "0"],
          /^api_error: validation_failed: .*max_uses/m,
        ],
        [
          ["create", "--node-name", "x", "--max-uses", "-2"],
          /^api_error: validation_failed: .*max_uses/m,
        ],
        [
          ["create", "--node-name", "x", "--ttl", "8d"],
          /^api_error: validation_failed: .*ttl_seconds/m,
        ],
        [["revoke", "not-a-uuid"], /^api_error: validation_failed: .*id/m],
        [["revoke"], /missing required argument 'id'/],
      ];
      for (const [args, want] of cases) {
        const r = await w.cli("node", "join-token", ...args);
        assertEquals([r.code, r.stdout], [1, ""], args.join(" "));
        assertMatch(r.stderr, want, args.join(" "));
      }
      assertEquals(await w.indexed(), [first.id]);
      assertEquals(await w.redeem(first.token, "node-a"), [200, null]);
    });
  });
});
