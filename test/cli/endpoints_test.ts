/**
 * Several endpoints for one cluster (issue 11): parsing the lists, the picker's try order, and
 * the client's failover rule against real sockets on 127.0.0.1 — a closed port (refused), a
 * server that reads the request and drops the connection (reset after sending), a server that
 * never answers (timeout), a TLS client against a plain socket (handshake failure) and fake
 * APIs that answer.
 */
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../assert.ts";
import { ApiClient } from "../../cli/client.ts";
import { EndpointPicker, parseEndpoints } from "../../cli/endpoints.ts";
import { ApiCallError, TransportError, UsageError } from "../../cli/errors.ts";
import { NamedWire } from "../../cli/wire_schemas.ts";
import { closedPort, envelope, json, startFakeApi } from "./fixtures.ts";

Deno.test("endpoint lists: comma-separated or arrays, normalized, duplicates kept once", () => {
  assertEquals(parseEndpoints("http://a:8080"), ["http://a:8080"]);
  assertEquals(parseEndpoints(" http://a:8080/ , https://b:8443 "), [
    "http://a:8080",
    "https://b:8443",
  ]);
  assertEquals(parseEndpoints(["http://a", "http://b/", "http://a"]), ["http://a", "http://b"]);
  for (const bad of ["http://a,,http://b", "http://a,", ",", ""]) {
    const e = assertThrows(() => parseEndpoints(bad));
    assert(e instanceof UsageError, bad);
    assertMatch(e.message, /empty entry/);
  }
  const e = assertThrows(() => parseEndpoints("http://a,localhost:8080"));
  assertMatch(e.message, /invalid endpoint "localhost:8080": must be an http\(s\) URL/);
  assertThrows(() => parseEndpoints([]));
});

Deno.test("endpoint picker: list order, from the last that answered, past one that failed", () => {
  const p = new EndpointPicker(["a", "b", "c"]);
  assertEquals([p.current, p.order()], ["a", ["a", "b", "c"]]);
  p.answered("b");
  assertEquals([p.current, p.order()], ["b", ["b", "c", "a"]]);
  p.failed("a"); // not the preferred one: no change
  assertEquals(p.order(), ["b", "c", "a"]);
  p.failed("b");
  assertEquals(p.order(), ["c", "a", "b"]);
  p.failed("c"); // wraps around
  assertEquals(p.order(), ["a", "b", "c"]);
  p.answered("unknown"); // not in the list: ignored
  assertEquals(p.current, "a");
  assertThrows(() => new EndpointPicker([]));
});

/** Servers that fail in the ways the client must tell apart. */
function badServers() {
  // Reads the request, then drops the connection: the request reached a server.
  const sink = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const sunk: string[] = [];
  const sinkLoop = (async () => {
    for await (const c of sink) {
      void (async () => {
        const buf = new Uint8Array(64 * 1024);
        const n = await c.read(buf).catch(() => null);
        if (n) sunk.push(new TextDecoder().decode(buf.subarray(0, n)));
        c.close();
      })();
    }
  })();
  // Accepts and never answers.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const silentLoop = (async () => {
    for await (const c of silent) held.push(c);
  })();
  return {
    sinkPort: sink.addr.port,
    silentPort: silent.addr.port,
    /** Request lines the sink received (`POST /v1/vms HTTP/1.1`). */
    sunkLines: () => sunk.map((s) => s.split("\r\n")[0]),
    async close() {
      sink.close();
      silent.close();
      for (const c of held) c.close();
      await Promise.all([sinkLoop, silentLoop]);
    },
  };
}

/** A `fetch` that records the URL of every attempt. */
function recordingFetch(attempts: string[]): typeof fetch {
  return (input, init) => {
    attempts.push(new URL(input instanceof Request ? input.url : String(input)).origin);
    return fetch(input, init);
  };
}

Deno.test("client failover: which failures move a request to the next endpoint", async (t) => {
  const bad = badServers();
  const good = startFakeApi({
    "GET /v1/vms": () => json({ items: [{ name: "a" }], next_cursor: null }),
    "POST /v1/things": () => json({ name: "created" }, 201),
    "GET /v1/down": () => envelope(503, "store_unavailable", "the store is down"),
  });
  const dead = `http://127.0.0.1:${closedPort()}`;
  const sink = `http://127.0.0.1:${bad.sinkPort}`;
  const silent = `http://127.0.0.1:${bad.silentPort}`;
  const client = (endpoints: string[], attempts: string[] = [], timeoutMs = 5000) =>
    new ApiClient({
      endpoint: endpoints,
      picker: new EndpointPicker(endpoints),
      timeoutMs,
      fetch: recordingFetch(attempts),
    });
  const post = (c: ApiClient) => c.json("POST", "/v1/things", NamedWire, { body: { x: 1 } });
  try {
    await t.step(
      "refused: any request moves on; the one that answered goes first next",
      async () => {
        const attempts: string[] = [];
        const c = client([dead, good.url], attempts);
        assertEquals((await c.listAll("/v1/vms", NamedWire)).items, [{ name: "a" }]);
        assertEquals((await post(c)).data, { name: "created" });
        assertEquals(attempts, [dead, good.url, good.url]);
        assertEquals(c.endpoint, good.url);
        assertEquals(good.seen.map((s) => s.method), ["GET", "POST"]);
      },
    );

    await t.step("TLS handshake failure: never connected, so a POST moves on too", async () => {
      const c = client([`https://127.0.0.1:${bad.sinkPort}`, good.url]);
      assertEquals((await post(c)).data, { name: "created" });
    });

    await t.step(
      "dropped after the request was sent: GET moves on, POST is not re-sent",
      async () => {
        const before = good.seen.length;
        assertEquals(
          (await client([sink, good.url]).listAll("/v1/vms", NamedWire)).items.length,
          1,
        );
        assertEquals(good.seen.length, before + 1);
        const e = await assertRejects(() => post(client([sink, good.url])));
        assert(e instanceof TransportError);
        assertEquals(e.code, "request_failed");
        assertMatch(e.message, new RegExp(`^POST /v1/things to ${sink} failed: `));
        assertEquals(good.seen.length, before + 1, "the POST never reached the second endpoint");
        assert(bad.sunkLines().includes("POST /v1/things HTTP/1.1"));
      },
    );

    await t.step("no response before the timeout: GET moves on, POST is not re-sent", async () => {
      const before = good.seen.length;
      const attempts: string[] = [];
      const listed = await client([silent, good.url], attempts, 300).listAll("/v1/vms", NamedWire);
      assertEquals([listed.items.length, attempts], [1, [silent, good.url]]);
      const e = await assertRejects(() => post(client([silent, good.url], [], 300)));
      assert(e instanceof TransportError);
      assertEquals(e.code, "request_timeout");
      assertEquals(good.seen.length, before + 1);
    });

    await t.step("an HTTP error answer is the answer: no other endpoint is asked", async () => {
      const attempts: string[] = [];
      const e = await assertRejects(() =>
        client([good.url, dead], attempts).json("GET", "/v1/down", NamedWire)
      );
      assert(e instanceof ApiCallError);
      assertEquals([e.code, e.status, attempts], ["store_unavailable", 503, [good.url]]);
    });

    await t.step(
      "every endpoint failing: one error naming each, with the last one's code",
      async () => {
        const e = await assertRejects(() => client([sink, dead]).listAll("/v1/vms", NamedWire));
        assert(e instanceof TransportError);
        assertEquals(e.code, "connection_refused");
        assertMatch(
          e.message,
          /^no endpoint answered \(2 tried\): GET \/v1\/vms to http.* failed: /,
        );
        assertMatch(e.message, new RegExp(`; cannot connect to ${dead} \\(GET /v1/vms\\)`));
        // One endpoint: its own error, as before lists existed.
        const one = await assertRejects(() => client([dead]).listAll("/v1/vms", NamedWire));
        assertEquals(
          one.message,
          `cannot connect to ${dead} (GET /v1/vms): connection refused (is otherix-api running?)`,
        );
      },
    );

    await t.step("a request the caller aborted is not sent elsewhere", async () => {
      const attempts: string[] = [];
      const stop = new AbortController();
      const c = client([silent, good.url], attempts);
      const pending = c.stream("/v1/events", { signal: stop.signal });
      setTimeout(() => stop.abort(), 50);
      await assertRejects(() => pending);
      assertEquals(attempts, [silent]);
    });
  } finally {
    await good.close();
    await bad.close();
  }
});

Deno.test("client failover: an event stream that broke makes the next endpoint first", async () => {
  const stream = () =>
    new Response("event: sync\ndata: {}\n\n", { headers: { "content-type": "text/event-stream" } });
  const a = startFakeApi({ "GET /v1/events": stream });
  const b = startFakeApi({ "GET /v1/events": stream });
  try {
    const c = new ApiClient({
      endpoint: [a.url, b.url],
      picker: new EndpointPicker([a.url, b.url]),
      timeoutMs: 5000,
    });
    const first = await c.stream("/v1/events");
    assertEquals(first.endpoint, a.url);
    await first.body.cancel();
    c.endpointFailed(first.endpoint);
    const second = await c.stream("/v1/events");
    assertEquals(second.endpoint, b.url);
    await second.body.cancel();
    assertEquals([a.seen.length, b.seen.length], [1, 1]);
  } finally {
    await a.close();
    await b.close();
  }
});
