import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { ApiClient, isConnectionRefused } from "../../cli/client.ts";
import { ApiCallError, TransportError } from "../../cli/errors.ts";
import { VmSchema } from "../../shared/api/vms.ts";
import { closedPort, envelope, json, startFakeApi, vmFixture } from "./fixtures.ts";

Deno.test("client: parses a valid response and keeps the raw body", async () => {
  const api = startFakeApi({ "GET /v1/vms/*": () => json({ ...vmFixture(), future_field: 1 }) });
  try {
    const c = new ApiClient({ endpoint: api.url + "/", token: "tok", timeoutMs: 5000 });
    const r = await c.json("GET", "/v1/vms/demo-vm", VmSchema);
    assertEquals(r.data.name, "demo-vm");
    assertEquals((r.raw as Record<string, unknown>).future_field, 1);
    assertEquals(api.seen[0].auth, "Bearer tok");
  } finally {
    await api.close();
  }
});

Deno.test("client: an error envelope becomes ApiCallError", async () => {
  const api = startFakeApi({
    "GET /v1/vms/*": () => envelope(404, "vm_not_found", 'vm "x" not found'),
  });
  try {
    const c = new ApiClient({ endpoint: api.url, timeoutMs: 5000 });
    const e = await assertRejects(() => c.json("GET", "/v1/vms/x", VmSchema));
    assert(e instanceof ApiCallError);
    assertEquals(e.render(), 'api_error: vm_not_found: vm "x" not found');
    assertEquals(e.status, 404);
  } finally {
    await api.close();
  }
});

Deno.test("client: non-JSON, non-envelope and schema-invalid responses are request_failed", async () => {
  const api = startFakeApi({
    "GET /html": () =>
      new Response("<html>hi</html>", { headers: { "content-type": "text/html" } }),
    "GET /bad-gateway": () => new Response("upstream down", { status: 502 }),
    "GET /wrong": () => json({ ...vmFixture(), id: "not-a-uuid" }),
  });
  try {
    const c = new ApiClient({ endpoint: api.url, timeoutMs: 5000 });
    for (
      const [path, part] of [
        ["/html", "not JSON"],
        ["/bad-gateway", "HTTP 502: upstream down"],
        ["/wrong", "unexpected response from GET /wrong: id:"],
      ]
    ) {
      const e = await assertRejects(() => c.json("GET", path, VmSchema));
      assert(e instanceof TransportError, path);
      assertEquals(e.code, "request_failed");
      assertStringIncludes(e.render(), part);
    }
  } finally {
    await api.close();
  }
});

Deno.test("client: a closed port is connection_refused", async () => {
  const c = new ApiClient({ endpoint: `http://127.0.0.1:${closedPort()}`, timeoutMs: 5000 });
  const e = await assertRejects(() => c.json("GET", "/v1/vms", VmSchema));
  assert(e instanceof TransportError);
  assertEquals(e.code, "connection_refused");
  assertStringIncludes(e.render(), "connection_refused: cannot connect to http://127.0.0.1:");
});

Deno.test("client: a slow server is request_timeout", async () => {
  const api = startFakeApi({
    "GET /slow": async () => {
      await new Promise((r) => setTimeout(r, 600));
      return json({});
    },
  });
  try {
    const c = new ApiClient({ endpoint: api.url, timeoutMs: 150 });
    const e = await assertRejects(() => c.json("GET", "/slow", VmSchema));
    assert(e instanceof TransportError);
    assertEquals(e.code, "request_timeout");
  } finally {
    await new Promise((r) => setTimeout(r, 600));
    await api.close();
  }
});

Deno.test("client: other fetch failures are request_failed", async () => {
  const c = new ApiClient({
    endpoint: "http://example.invalid",
    timeoutMs: 5000,
    fetch: () => Promise.reject(new TypeError("fetch failed", { cause: new Error("dns error") })),
  });
  const e = await assertRejects(() => c.text("GET", "/x"));
  assert(e instanceof TransportError);
  assertEquals(e.code, "request_failed");
  assertStringIncludes(e.message, "dns error");
  assert(
    isConnectionRefused(new TypeError("x", { cause: new Deno.errors.ConnectionRefused("y") })),
  );
});

Deno.test("client: listAll follows next_cursor across pages", async () => {
  const api = startFakeApi({
    "GET /v1/vms": (_req, seen) => {
      const cursor = seen.query.get("cursor");
      if (!cursor) return json({ items: [vmFixture({ name: "a" })], next_cursor: "p2" });
      if (cursor === "p2") return json({ items: [vmFixture({ name: "b" })], next_cursor: "p3" });
      return json({ items: [vmFixture({ name: "c" })], next_cursor: null });
    },
  });
  try {
    const c = new ApiClient({ endpoint: api.url, timeoutMs: 5000 });
    const { items, raw } = await c.listAll("/v1/vms", VmSchema);
    assertEquals(items.map((v) => v.name), ["a", "b", "c"]);
    assertEquals(raw.length, 3);
    assertEquals(api.seen.map((s) => s.query.get("cursor")), [null, "p2", "p3"]);
  } finally {
    await api.close();
  }
});
