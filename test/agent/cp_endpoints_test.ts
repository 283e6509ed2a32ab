/**
 * The agent's control-plane list (agent/cp_endpoints.ts): ordering, round-robin failover,
 * sticking to what answers, persistence, corrupt files and limits.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import {
  CP_ENDPOINTS_FILE,
  CpEndpoints,
  MAX_CP_ENDPOINTS,
  normalizeCpUrl,
} from "../../agent/cp_endpoints.ts";
import { memoryLogger } from "./helpers.ts";

const A = "https://cp-a.lan:8443";
const B = "https://cp-b.lan:8443";
const C = "https://cp-c.lan:8443";

/** Parsed log lines with `msg` containing `text`. */
function logged(lines: string[], text: string): Record<string, unknown>[] {
  return lines.map((l) => JSON.parse(l)).filter((r) => String(r.msg).includes(text));
}

async function withStateDir(fn: (dir: string, file: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-cpe-" });
  try {
    await fn(dir, `${dir}/${CP_ENDPOINTS_FILE}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("cp endpoints: URL validation and canonical form", async (t) => {
  await t.step("https only; no credentials, query or fragment", () => {
    assertEquals(normalizeCpUrl("http://cp.lan:8443"), null);
    assertEquals(normalizeCpUrl("https://u:p@cp.lan:8443"), null);
    assertEquals(normalizeCpUrl("https://cp.lan:8443/?x=1"), null);
    assertEquals(normalizeCpUrl("https://cp.lan:8443/#x"), null);
    assertEquals(normalizeCpUrl("cp.lan:8443"), null);
    assertEquals(normalizeCpUrl("not a url"), null);
  });
  await t.step("case, default port and trailing slashes do not make a new URL", () => {
    assertEquals(normalizeCpUrl("https://CP.lan:8443/"), "https://cp.lan:8443");
    assertEquals(normalizeCpUrl("https://cp.lan:443"), "https://cp.lan");
    assertEquals(normalizeCpUrl("https://[::1]:8443//"), "https://[::1]:8443");
    assertEquals(normalizeCpUrl("https://cp.lan/otherix/"), "https://cp.lan/otherix");
  });
  await t.step("a configured URL that is not https is refused with a clear error", () => {
    const { log } = memoryLogger();
    const e = assertThrows(() => new CpEndpoints("http://cp.lan:8443", log));
    assertEquals(e.message, "bootstrap.cp_url must be an https:// URL, got http://cp.lan:8443");
  });
});

Deno.test("cp endpoints: ordering and learning from heartbeats", async (t) => {
  const { log, lines } = memoryLogger();
  const eps = new CpEndpoints(A, log);

  await t.step("starts with the configured URL alone", () => {
    assertEquals(eps.list(), [A]);
    assertEquals(eps.current(), A);
  });

  await t.step("learns the replicas after the configured URL, de-duplicated", async () => {
    assert(await eps.learn([B + "/", A, "https://CP-C.lan:8443", B], A));
    assertEquals(eps.list(), [A, B, C]);
    assertEquals(eps.current(), A, "learning does not move the agent");
    assertEquals(logged(lines, "control planes: replica list changed").length, 1);
  });

  await t.step("the same list again changes nothing", async () => {
    assertEquals(await eps.learn([B, C], A), false);
    assertEquals(logged(lines, "control planes: replica list changed").length, 1);
  });

  await t.step("an empty list (older control plane) teaches nothing", async () => {
    assertEquals(await eps.learn([], A), false);
    assertEquals(eps.list(), [A, B, C]);
  });

  await t.step("a replica that left is dropped; the configured URL always stays", async () => {
    assert(await eps.learn([C], A));
    assertEquals(eps.list(), [A, C]);
  });

  await t.step("the URL that answered stays even when the control plane omits it", async () => {
    eps.failed(A, new Error("refused"), "heartbeat");
    assertEquals(eps.current(), C);
    assert(await eps.learn([B], C));
    assertEquals(eps.list(), [A, B, C]);
    assertEquals(eps.current(), C, "the agent sticks to the replica that answers");
  });

  await t.step("invalid learnt URLs are skipped with a Warn line", async () => {
    assertEquals(await eps.learn(["http://cp-d.lan:8443", B], C), false, "nothing new");
    assertEquals(eps.list(), [A, B, C]);
    const warn = logged(lines, "ignoring invalid URLs from the control plane");
    assertEquals(warn.map((w) => w.urls), [["http://cp-d.lan:8443"]]);
  });
});

Deno.test("cp endpoints: failover is round robin and sticks to what answers", async (t) => {
  const { log, lines } = memoryLogger();
  const eps = new CpEndpoints(A, log, [B, C]);
  const warns = () => logged(lines, "control plane unreachable; trying the next replica");

  await t.step("a failure of the current URL moves to the next, with one Warn line", () => {
    assertEquals(eps.failed(A, new Error("connect ECONNREFUSED"), "heartbeat"), B);
    assertEquals(eps.current(), B);
    const w = warns();
    assertEquals(w.length, 1);
    assertEquals(w[0].msg, "heartbeat: control plane unreachable; trying the next replica");
    assertEquals([w[0].level, w[0].from, w[0].to, w[0].err], [
      "warn",
      A,
      B,
      "connect ECONNREFUSED",
    ]);
  });

  await t.step("a late failure of a URL already left behind changes nothing", () => {
    assertEquals(eps.failed(A, new Error("reset"), "report"), B);
    assertEquals(eps.current(), B);
    assertEquals(warns().length, 1);
  });

  await t.step("an answer sticks and is logged once as back to healthy", () => {
    eps.succeeded(B, "heartbeat");
    eps.succeeded(B, "heartbeat");
    assertEquals(eps.current(), B);
    const info = logged(lines, "control plane reachable again");
    assertEquals(info.length, 1);
    assertEquals([info[0].level, info[0].cp_url, info[0].failovers], ["info", B, 1]);
  });

  await t.step("the rotation wraps around to the configured URL", () => {
    assertEquals(eps.failed(B, new Error("x"), "heartbeat"), C);
    assertEquals(eps.failed(C, new Error("x"), "heartbeat"), A);
    assertEquals(eps.failed(A, new Error("x"), "heartbeat"), B);
    assertEquals(warns().length, 4, "one Warn line per failover during the first round");
  });

  await t.step("after a whole round without an answer the rotation goes on quietly", () => {
    assertEquals(eps.failed(B, new Error("x"), "heartbeat"), C);
    assertEquals(warns().filter((w) => w.level === "warn").length, 4);
    assertEquals(warns().filter((w) => w.level === "debug").length, 1);
  });

  await t.step("a single URL has nowhere to go: no failover, no line", () => {
    const one = memoryLogger();
    const single = new CpEndpoints(A, one.log);
    assertEquals(single.failed(A, new Error("x"), "heartbeat"), A);
    assertEquals(one.lines.length, 0);
  });

  await t.step("no URL at all: current() says what to configure", () => {
    const none = new CpEndpoints(undefined, memoryLogger().log);
    const e = assertThrows(() => none.current());
    assertStringIncludes(e.message, "set bootstrap.cp_url");
  });
});

Deno.test("cp endpoints: persisted in the state dir for the next start", async (t) => {
  await withStateDir(async (dir, file) => {
    await t.step("a missing file is an empty learnt list, silently", async () => {
      const { log, lines } = memoryLogger();
      const eps = await CpEndpoints.load({ configured: A, file, log });
      assertEquals(eps.list(), [A]);
      assertEquals(lines, []);
    });

    await t.step("a changed list is written atomically, mode 0600", async () => {
      const { log } = memoryLogger();
      const eps = await CpEndpoints.load({ configured: A, file, log });
      await eps.learn([B, C], A);
      assertEquals(JSON.parse(await Deno.readTextFile(file)), { control_planes: [A, B, C] });
      assertEquals((await Deno.stat(file)).mode! & 0o777, 0o600);
      const leftovers = [...Deno.readDirSync(dir)].map((e) => e.name);
      assertEquals(leftovers, [CP_ENDPOINTS_FILE], "no temp file left behind");
    });

    await t.step("a restarted agent starts at the configured URL and knows the rest", async () => {
      const { log } = memoryLogger();
      const eps = await CpEndpoints.load({ configured: A, file, log });
      assertEquals(eps.list(), [A, B, C]);
      assertEquals(eps.current(), A);
      assertEquals(eps.failed(A, new Error("refused"), "heartbeat"), B);
    });

    await t.step("without a configured URL the persisted list is used", async () => {
      const { log } = memoryLogger();
      const eps = await CpEndpoints.load({ file, log });
      assertEquals(eps.current(), A);
    });

    await t.step("a new configured URL goes first; the persisted ones follow", async () => {
      const { log } = memoryLogger();
      const eps = await CpEndpoints.load({ configured: C, file, log });
      assertEquals(eps.list(), [C, A, B]);
    });

    await t.step("a write failure is logged and the list kept in memory", async () => {
      const { log, lines } = memoryLogger();
      const eps = await CpEndpoints.load({ configured: A, file: `${dir}/gone/x.json`, log });
      assert(await eps.learn([B], A));
      assertEquals(eps.list(), [A, B]);
      assertEquals(logged(lines, "control planes: cannot persist the list").length, 1);
    });
  });
});

Deno.test("cp endpoints: a corrupt file is ignored with a warning", async (t) => {
  const cases: [string, string][] = [
    ["not JSON", "{control_planes: ["],
    ["the wrong shape", JSON.stringify([A, B])],
    ["an unknown field", JSON.stringify({ control_planes: [B], extra: 1 })],
    ["a non-https URL", JSON.stringify({ control_planes: [B, "http://cp-x.lan:8443"] })],
    [
      `more than ${MAX_CP_ENDPOINTS} URLs`,
      JSON.stringify({
        control_planes: Array.from({ length: 17 }, (_, i) => `https://cp-${i}.lan:8443`),
      }),
    ],
  ];
  for (const [what, content] of cases) {
    await t.step(what, async () => {
      await withStateDir(async (_dir, file) => {
        await Deno.writeTextFile(file, content);
        const { log, lines } = memoryLogger();
        const eps = await CpEndpoints.load({ configured: A, file, log });
        assertEquals(eps.list(), [A], "nothing from the file is used");
        const w = logged(lines, "control planes: ignoring the persisted list");
        assertEquals(w.length, 1);
        assertEquals([w[0].level, w[0].file], ["warn", file]);
        assert(String(w[0].err).length > 0, "says why");
        assertEquals(await Deno.readTextFile(file), content, "the file is left as it was");
      });
    });
  }
});

Deno.test("cp endpoints: at most 16 URLs, the configured and the answering one kept", async () => {
  const { log } = memoryLogger();
  const many = Array.from({ length: 20 }, (_, i) => `https://cp-${i}.lan:8443`);
  const eps = new CpEndpoints(A, log);
  await eps.learn(many, A);
  assertEquals(eps.list().length, MAX_CP_ENDPOINTS);
  assertEquals(eps.list(), [A, ...many.slice(0, MAX_CP_ENDPOINTS - 1)]);

  // The agent reached cp-19 (beyond the cap): it stays, the last learnt one makes room.
  await eps.learn(many, many[19]);
  assertEquals(eps.list().length, MAX_CP_ENDPOINTS);
  assertEquals(eps.list()[0], A);
  assertEquals(eps.list().at(-1), many[19]);
  assertEquals(eps.list().includes(many[14]), false);
});
