import { assertEquals } from "../assert.ts";
import { Hono } from "hono";
import { bodyLimit } from "../../cp/routes/body_limit.ts";
import { errorHandler } from "../../shared/http.ts";
import { createLogger } from "../../shared/log.ts";

function app(max: number) {
  const a = new Hono();
  a.onError(errorHandler(createLogger("test", "error")));
  a.use("*", bodyLimit(max));
  a.post("/", async (c) => c.json({ len: (await c.req.arrayBuffer()).byteLength }));
  return a;
}

const stream = (chunks: number[]) =>
  new ReadableStream<Uint8Array>({
    start(ctl) {
      for (const n of chunks) ctl.enqueue(new Uint8Array(n));
      ctl.close();
    },
  });

Deno.test("body limit: declared or streamed bodies over the limit are 400 validation_failed", async () => {
  const a = app(100);
  const small = await a.request("/", { method: "POST", body: new Uint8Array(100) });
  assertEquals([small.status, await small.json()], [200, { len: 100 }]);
  const big = await a.request("/", { method: "POST", body: new Uint8Array(101) });
  assertEquals([big.status, (await big.json()).error.code], [400, "validation_failed"]);
  // No content-length: counted while reading.
  const okStream = await a.request("/", { method: "POST", body: stream([60, 40]) });
  assertEquals([okStream.status, await okStream.json()], [200, { len: 100 }]);
  const bigStream = await a.request("/", { method: "POST", body: stream([60, 41]) });
  assertEquals([bigStream.status, (await bigStream.json()).error.code], [400, "validation_failed"]);
});
