/**
 * `POST|GET /v1/nodes/join-tokens`, `DELETE /v1/nodes/join-tokens/{id}` through the real
 * routes on a real store (a Hono app mounted the way the public API mounts it): RBAC, the
 * listing never carrying a secret, expired / used-up tokens kept listed, revocation refusing
 * a later redemption, pagination, and bad input changing nothing.
 */
import { Hono } from "hono";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import type { AgentClient } from "../../cp/agent_client.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import type { AppEnv } from "../../cp/auth/middleware.ts";
import { hashToken } from "../../cp/auth/tokens.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { JOIN_TOKENS_BY_ID, joinTokenIdKey } from "../../cp/join_tokens.ts";
import { joinTokenRoutes } from "../../cp/nodes/join_token_routes.ts";
import { bootstrapNode } from "../../cp/nodes/service.ts";
import { keys } from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { createUser } from "../../cp/users/service.ts";
import { JoinTokenCreateResponseSchema, JoinTokenSchema } from "../../shared/api/nodes.ts";
import { listOf } from "../../shared/api/common.ts";
import { ApiError } from "../../shared/errors.ts";
import { errorHandler, notFoundHandler } from "../../shared/http.ts";
import { createLogger } from "../../shared/log.ts";
import { certFingerprint, createCa, createCsr, splitSans } from "../../shared/pki.ts";
import type { Role } from "../../shared/rbac.ts";

const BASE = "/v1/nodes/join-tokens";
const TokenList = listOf(JoinTokenSchema);

interface World {
  ctx: CpContext;
  app: Hono<AppEnv>;
  /** Bearer token of a fresh user with `role`, and that user's id. */
  as(role: Role): Promise<{ auth: string; userId: string }>;
  /** `fetch` against the app with `auth` (JSON body when given). */
  call(method: string, path: string, auth: string | null, body?: unknown): Promise<Response>;
  /** Every id in the id index. */
  indexed(): Promise<string[]>;
}

async function withWorld(fn: (w: World) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-jt-routes-" });
  const store = await openKvStore(`${dir}/store.kv`);
  const ca = await createCa();
  const ctx: CpContext = {
    cfg: parseApiConfig(`store:\n  data_dir: ${dir}\n`),
    log: createLogger("test", "error"),
    store,
    pki: { ca, caFingerprint: await certFingerprint(ca.certPem), replica: ca, replicaName: "cp" },
    jwtSecret: crypto.getRandomValues(new Uint8Array(32)),
    agents: {} as AgentClient,
    now: () => new Date(),
  };
  // Mounted as the public API mounts it (cp/app.ts publicApp).
  const app = new Hono<AppEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.route(BASE, joinTokenRoutes(ctx));
  try {
    await fn({
      ctx,
      app,
      as: async (role) => {
        const u = await createUser(store, {
          email: `${role}-${crypto.randomUUID()}@example.com`,
          password: "password",
          role,
        });
        const t = await issueAccessToken(ctx.jwtSecret, { sub: u.id, role }, 600);
        return { auth: `Bearer ${t.token}`, userId: u.id };
      },
      call: (method, path, auth, body) => {
        const headers: Record<string, string> = {};
        if (auth) headers.authorization = auth;
        if (body !== undefined) headers["content-type"] = "application/json";
        return Promise.resolve(app.request(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        }));
      },
      indexed: async () =>
        (await store.range(JOIN_TOKENS_BY_ID)).kvs.map((kv) =>
          kv.key.slice(JOIN_TOKENS_BY_ID.length)
        ),
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The error code of an error response with `status`. */
async function errorOf(res: Response, status: number): Promise<string> {
  const text = await res.text();
  assertEquals(res.status, status, text);
  return JSON.parse(text).error.code;
}

/** Mints a token through the API as `auth`. */
async function mint(w: World, auth: string, body: Record<string, unknown>) {
  const res = await w.call("POST", BASE, auth, body);
  const text = await res.text();
  assertEquals(res.status, 201, text);
  return JoinTokenCreateResponseSchema.parse(JSON.parse(text));
}

/** Redeems `token` as an agent's bootstrap does (the service behind the agent port). */
async function redeem(w: World, token: string, node = "node-a") {
  const csr = await createCsr(node, splitSans(["127.0.0.1"]));
  return await bootstrapNode(w.ctx, token, csr.csrPem);
}

Deno.test("join-token routes: node:manage only (admin, operator); others 403, anonymous 401", async () => {
  await withWorld(async (w) => {
    const admin = await w.as("admin");
    const victim = await mint(w, admin.auth, { node_name: "node-a" });
    for (const role of ["developer", "viewer"] as const) {
      const { auth } = await w.as(role);
      assertEquals(
        await errorOf(await w.call("POST", BASE, auth, { node_name: "x" }), 403),
        "permission_denied",
        role,
      );
      assertEquals(await errorOf(await w.call("GET", BASE, auth), 403), "permission_denied");
      assertEquals(
        await errorOf(await w.call("DELETE", `${BASE}/${victim.id}`, auth), 403),
        "permission_denied",
      );
    }
    assertEquals(await errorOf(await w.call("GET", BASE, null), 401), "unauthenticated");
    assertEquals(
      await errorOf(await w.call("DELETE", `${BASE}/${victim.id}`, null), 401),
      "unauthenticated",
    );
    // Nothing the refused callers sent changed anything.
    assertEquals(await w.indexed(), [victim.id]);

    for (const role of ["admin", "operator"] as const) {
      const { auth, userId } = await w.as(role);
      const t = await mint(w, auth, { node_name: `node-${role}` });
      const list = TokenList.parse(await (await w.call("GET", BASE, auth)).json());
      assertEquals(list.items.find((i) => i.id === t.id)?.created_by, userId, role);
      assertEquals((await w.call("DELETE", `${BASE}/${t.id}`, auth)).status, 204, role);
    }
    assertEquals(await w.indexed(), [victim.id]);
  });
});

Deno.test("join-token routes: the list is metadata only; expired and used-up tokens stay listed", async (t) => {
  await withWorld(async (w) => {
    const { auth, userId } = await w.as("operator");
    const t0 = Date.now();
    w.ctx.now = () => new Date(t0);
    const single = await mint(w, auth, { node_name: "node-a", ttl_seconds: 60 });
    const multi = await mint(w, auth, { node_name: "node-b", ttl_seconds: 3600, max_uses: 3 });
    const list = async () => {
      const res = await w.call("GET", BASE, auth);
      const text = await res.text();
      assertEquals(res.status, 200, text);
      for (const secret of [single.token, multi.token]) {
        assert(!text.includes(secret), "the list never carries a token");
        assert(!text.includes(await hashToken(secret)), "nor its hash");
      }
      assertEquals(text.includes("token_hash"), false);
      const page = TokenList.parse(JSON.parse(text));
      const byId = new Map(page.items.map((i) => [i.id, i]));
      return { single: byId.get(single.id), multi: byId.get(multi.id), size: byId.size };
    };

    await t.step("fresh tokens: every field, nothing else", async () => {
      const l = await list();
      assertEquals(l.single, {
        id: single.id,
        node_name: "node-a",
        max_uses: 1,
        uses: 0,
        uses_left: 1,
        expires_at: new Date(t0 + 60_000).toISOString(),
        expired: false,
        created_at: new Date(t0).toISOString(),
        created_by: userId,
      });
      assertEquals([l.multi?.max_uses, l.multi?.uses_left, l.multi?.expired], [3, 3, false]);
    });

    await t.step("a use counts; the last use marks the token expired but keeps it", async () => {
      await redeem(w, multi.token, "node-b");
      assertEquals([(await list()).multi?.uses, (await list()).multi?.uses_left], [1, 2]);
      await redeem(w, single.token, "node-a");
      const l = await list();
      assertEquals([l.single?.uses, l.single?.uses_left, l.single?.expired], [1, 0, true]);
      assertEquals(l.multi?.expired, false);
    });

    await t.step("past expires_at: expired, still listed with its uses left", async () => {
      w.ctx.now = () => new Date(t0 + 61_000);
      assertEquals((await list()).multi?.expired, false);
      w.ctx.now = () => new Date(t0 + 3600_000);
      const l = await list();
      assertEquals([l.multi?.expired, l.multi?.uses_left, l.size], [true, 2, 2]);
    });
  });
});

Deno.test("join-token routes: a revoked token no longer redeems; revoke is not repeatable", async () => {
  await withWorld(async (w) => {
    const { auth } = await w.as("admin");
    const keep = await mint(w, auth, { node_name: "node-a", max_uses: 2 });
    const gone = await mint(w, auth, { node_name: "node-b", max_uses: 2 });
    await redeem(w, gone.token, "node-b"); // one use left
    assertEquals((await w.call("DELETE", `${BASE}/${gone.id}`, auth)).status, 204);

    const e = await assertRejects(() => redeem(w, gone.token, "node-b"));
    assert(e instanceof ApiError && e.code === "unauthenticated", String(e));
    assertEquals(await w.ctx.store.get(keys.joinToken(await hashToken(gone.token))), null);
    assertEquals(await w.ctx.store.get(joinTokenIdKey(gone.id)), null);
    const list = TokenList.parse(await (await w.call("GET", BASE, auth)).json());
    assertEquals(list.items.map((i) => i.id), [keep.id]);

    // Again, or an id never minted: 404 not_found; not a UUID: validation_failed.
    assertEquals(
      await errorOf(await w.call("DELETE", `${BASE}/${gone.id}`, auth), 404),
      "not_found",
    );
    assertEquals(
      await errorOf(await w.call("DELETE", `${BASE}/${crypto.randomUUID()}`, auth), 404),
      "not_found",
    );
    assertEquals(
      await errorOf(await w.call("DELETE", `${BASE}/node-a`, auth), 400),
      "validation_failed",
    );
    // The other token is untouched and still redeems.
    assertEquals((await redeem(w, keep.token, "node-a")).node_name, "node-a");
  });
});

Deno.test("join-token routes: limit/cursor pagination walks every token once, in id order", async () => {
  await withWorld(async (w) => {
    const { auth } = await w.as("admin");
    const minted: string[] = [];
    for (let i = 0; i < 5; i++) minted.push((await mint(w, auth, { node_name: `n${i}` })).id);
    const seen: string[] = [];
    const sizes: number[] = [];
    let cursor: string | null = null;
    do {
      const q: string = `?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const res = await w.call("GET", `${BASE}${q}`, auth);
      const page = TokenList.parse(await res.json());
      sizes.push(page.items.length);
      seen.push(...page.items.map((i) => i.id));
      cursor = page.next_cursor;
    } while (cursor);
    assertEquals(sizes, [2, 2, 1]);
    assertEquals(seen, [...minted].sort());

    for (const q of ["?limit=0", "?limit=x", "?cursor=not-a-cursor"]) {
      assertEquals(
        await errorOf(await w.call("GET", `${BASE}${q}`, auth), 400),
        "validation_failed",
        q,
      );
    }
  });
});

Deno.test("join-token routes: bad create input is validation_failed and stores nothing", async () => {
  await withWorld(async (w) => {
    const { auth } = await w.as("admin");
    const bad: unknown[] = [
      { node_name: "node-a", max_uses: 0 },
      { node_name: "node-a", max_uses: -1 },
      { node_name: "node-a", max_uses: 1.5 },
      { node_name: "node-a", ttl_seconds: 0 },
      { node_name: "node-a", ttl_seconds: 8 * 24 * 3600 },
      { node_name: "Not_A_Name" },
      { node_name: "join-tokens" },
      {},
    ];
    for (const body of bad) {
      const res = await w.call("POST", BASE, auth, body);
      assertEquals(await errorOf(res, 400), "validation_failed", JSON.stringify(body));
    }
    assertEquals(await w.indexed(), []);
    assertEquals((await w.ctx.store.range("/join-tokens/")).kvs, []);
  });
});
