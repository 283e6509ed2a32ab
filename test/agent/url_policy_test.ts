/**
 * The agent side of `images.url_policy` (agent/policy_fetch.ts through the image cache):
 * judged on the address actually connected to, after DNS resolution and on every hop, with
 * real HTTP(S) servers on loopback addresses. 127.0.0.1 plays an allowed server
 * (`allow_loopback: true`) and 127.0.0.2 a refused one (`deny_cidrs: [127.0.0.2/32]`).
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { ImageCache } from "../../agent/images.ts";
import { CONNECT_FAILED, policyFetch, UrlPolicyError } from "../../agent/policy_fetch.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { DEFAULT_URL_POLICY, UrlPolicySchema } from "../../shared/url_policy.ts";

const IMAGE = new TextEncoder().encode("not really a disk image, but bytes all the same\n");

/** Records every request a server answers. */
interface Seen {
  path: string;
  authorization: string | null;
}

function serve(
  hostname: string,
  port: number,
  handler: (req: Request, seen: Seen[]) => Response,
  tls?: { cert: string; key: string },
) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname, port, onListen: () => {}, ...tls }, (req) => {
    seen.push({ path: new URL(req.url).pathname, authorization: req.headers.get("authorization") });
    return handler(req, seen);
  });
  return { server, seen, port: server.addr.port };
}

const image = () => new Response(IMAGE);

/** Two servers on one port: 127.0.0.1 (allowed) and 127.0.0.2 (refused by the policy). */
function pair(handler: (req: Request) => Response = image) {
  const good = serve("127.0.0.1", 0, handler);
  const bad = serve("127.0.0.2", good.port, image);
  return {
    good,
    bad,
    port: good.port,
    close: () => Promise.all([good.server.shutdown(), bad.server.shutdown()]),
  };
}

const POLICY = UrlPolicySchema.parse({ allow_loopback: true, deny_cidrs: ["127.0.0.2/32"] });

Deno.test("agent url policy: judged on the resolved address of every connection", async (t) => {
  const s = pair((req) => {
    const url = new URL(req.url);
    if (url.pathname === "/hop") {
      return new Response(null, {
        status: 302,
        headers: { location: `http://rebind.test:${url.port}/img.qcow2` },
      });
    }
    return image();
  });
  try {
    await t.step(
      "a name with a refused and an allowed address: only the allowed is used",
      async () => {
        const f = policyFetch({
          policy: POLICY,
          lookup: () => Promise.resolve(["127.0.0.2", "127.0.0.1"]),
        });
        const res = await f(`http://nas.test:${s.port}/img.qcow2`);
        assertEquals(new Uint8Array(await res.arrayBuffer()), IMAGE);
        assertEquals(s.good.seen.length, 1);
        assertEquals(s.bad.seen.length, 0);
      },
    );

    await t.step("DNS rebinding: the redirect's second resolution is judged again", async () => {
      const answers = [["127.0.0.1"], ["127.0.0.2"]];
      const asked: string[] = [];
      const f = policyFetch({
        policy: POLICY,
        lookup: (host) => {
          asked.push(host);
          return Promise.resolve(answers.shift() ?? []);
        },
      });
      const err = await assertRejects(() => f(`http://rebind.test:${s.port}/hop`));
      assert(err instanceof UrlPolicyError, String(err));
      assertStringIncludes(err.message, "host rebind.test resolves to refused addresses");
      assertEquals(asked, ["rebind.test", "rebind.test"]);
      assertEquals(s.bad.seen.length, 0, "the refused address was never connected to");
    });

    await t.step(
      "every IP literal form of a refused address is refused without connecting",
      async () => {
        const f = policyFetch({ policy: DEFAULT_URL_POLICY });
        for (
          const host of ["127.0.0.1", "0x7f000001", "2130706433", "127.1", "[::ffff:127.0.0.1]"]
        ) {
          const err = await assertRejects(() => f(`http://${host}:${s.port}/img.qcow2`));
          assert(err instanceof UrlPolicyError, `${host}: ${err}`);
          assertStringIncludes(err.message, "allow_loopback");
        }
        const before = s.good.seen.length;
        await assertRejects(() => f(`http://localhost:${s.port}/img.qcow2`));
        assertEquals(s.good.seen.length, before);
      },
    );
  } finally {
    await s.close();
  }
});

Deno.test("agent url policy: the image cache refuses, redacts and does not reveal ports", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otherix-urlpolicy-" });
  const logs: Record<string, unknown>[] = [];
  const log = createLogger("agent", "debug", (l) => logs.push(JSON.parse(l)));
  const s = pair((req) => {
    const url = new URL(req.url);
    if (url.pathname === "/elsewhere") {
      // Another origin (127.0.0.1 by another name): credentials must not follow.
      return new Response(null, {
        status: 302,
        headers: { location: `http://other.test:${url.port}/img.qcow2` },
      });
    }
    if (req.headers.get("authorization") !== `Basic ${btoa("user:s3cret")}`) {
      return url.pathname === "/img.qcow2" && url.hostname === "other.test"
        ? image()
        : new Response("who are you", { status: 401 });
    }
    return image();
  });
  // A port that was open a moment ago and is closed now.
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closedPort = (closed.addr as Deno.NetAddr).port;
  closed.close();
  // A port that accepts and hangs up at once.
  const rude = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const rudePort = (rude.addr as Deno.NetAddr).port;
  (async () => {
    for await (const conn of rude) conn.close();
  })().catch(() => {});
  const lookup = (host: string) =>
    Promise.resolve(host.endsWith(".test") ? ["127.0.0.1"] : ["127.0.0.2"]);
  try {
    await t.step(
      "default policy: a loopback image URL fails with download_failed, no request made",
      async () => {
        const cache = new ImageCache({ idleTimeoutMs: 5000, urlPolicy: DEFAULT_URL_POLICY, log });
        const err = await assertRejects(() =>
          cache.ensure({ poolPath: `${root}/p1`, url: `http://127.0.0.1:${s.port}/img.qcow2` })
        );
        assertEquals((err as ApiError).code, "download_failed");
        assertStringIncludes(err.message, "refused by images.url_policy");
        assertEquals(s.good.seen.length, 0);
      },
    );

    await t.step("credentials reach the image server and nowhere else", async () => {
      const cache = new ImageCache({
        idleTimeoutMs: 5000,
        fetch: policyFetch({ policy: POLICY, lookup }),
        log,
      });
      const url = `http://user:s3cret@nas.test:${s.port}/img.qcow2`;
      const got = await cache.ensure({ poolPath: `${root}/p2`, url });
      assertEquals(got.source, `http://***@nas.test:${s.port}/img.qcow2`);
      assertEquals(
        (await Deno.readTextFile(`${got.path}.source`)).trim(),
        `http://***@nas.test:${s.port}/img.qcow2`,
      );
      assertEquals(s.good.seen.at(-1)!.authorization, `Basic ${btoa("user:s3cret")}`);
      // A redirect to another origin does not carry them.
      const hop = `http://user:s3cret@nas.test:${s.port}/elsewhere`;
      const n = s.good.seen.length;
      await cache.ensure({ poolPath: `${root}/p3`, url: hop });
      assertEquals(s.good.seen.slice(n).map((x) => [x.path, x.authorization]), [
        ["/elsewhere", `Basic ${btoa("user:s3cret")}`],
        ["/img.qcow2", null],
      ]);
    });

    await t.step("errors and logs show credentials as ***", async () => {
      const cache = new ImageCache({
        idleTimeoutMs: 5000,
        fetch: policyFetch({ policy: POLICY, lookup }),
        log,
      });
      const err = await assertRejects(() =>
        cache.ensure({
          poolPath: `${root}/p4`,
          url: `http://user:wrong@nas.test:${s.port}/img.qcow2`,
        })
      );
      assertEquals(
        err.message,
        `download http://***@nas.test:${s.port}/img.qcow2: HTTP 401 Unauthorized`,
      );
      assertEquals((err as ApiError).details, { url: `http://***@nas.test:${s.port}/img.qcow2` });
      const mismatch = await assertRejects(() =>
        cache.ensure({
          poolPath: `${root}/p5`,
          url: `http://user:s3cret@nas.test:${s.port}/img.qcow2`,
          sha256: "0".repeat(64),
        })
      );
      assert(!mismatch.message.includes("s3cret"), mismatch.message);
      assert(!JSON.stringify(logs).includes("s3cret"), "no log line carries the password");
    });

    await t.step(
      "a closed port and a port that hangs up give one and the same message",
      async () => {
        const cache = new ImageCache({ idleTimeoutMs: 5000, urlPolicy: POLICY, log });
        const messages: string[] = [];
        for (const port of [closedPort, rudePort]) {
          const err = await assertRejects(() =>
            cache.ensure({ poolPath: `${root}/p6`, url: `http://127.0.0.1:${port}/img.qcow2` })
          );
          assertEquals((err as ApiError).code, "download_failed");
          messages.push(err.message.replace(String(port), "PORT"));
        }
        assertEquals(messages[0], `download http://127.0.0.1:PORT/img.qcow2: ${CONNECT_FAILED}`);
        assertEquals(messages[1], messages[0]);
        // The node's own log keeps the cause.
        assert(logs.some((l) => l.msg === "image: download failed" && typeof l.cause === "string"));
      },
    );
  } finally {
    rude.close();
    await s.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("agent url policy: https keeps verifying the URL's host name over the pinned address", async () => {
  const ca = await createCa("url policy test CA");
  const cert = await issueServerCert(ca, "images.test", "test", splitSans(["images.test"]));
  const s = serve("127.0.0.1", 0, image, { cert: cert.certPem, key: cert.keyPem });
  try {
    const f = policyFetch({
      policy: POLICY,
      lookup: () => Promise.resolve(["127.0.0.1"]),
      caCerts: [ca.certPem],
    });
    const res = await f(`https://images.test:${s.port}/img.qcow2`);
    assertEquals(new Uint8Array(await res.arrayBuffer()), IMAGE);
    // The same address under a name the certificate does not carry fails verification.
    const err = await assertRejects(() => f(`https://wrong.test:${s.port}/img.qcow2`));
    assertEquals(err.message, CONNECT_FAILED);
  } finally {
    await s.server.shutdown();
  }
});
