/**
 * Request body size limit: 400 `validation_failed` when a body exceeds `maxBytes`
 * (declared `content-length`, or counted while reading a chunked body). Unlike Hono's
 * `bodyLimit`, the rebuilt request does not copy `request.signal` (whose access makes
 * `Deno.serve` print a legacy-abort warning).
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "../../shared/errors.ts";

/** The body-limit middleware. */
export function bodyLimit(maxBytes: number): MiddlewareHandler {
  const tooLarge = () =>
    new ApiError("validation_failed", `request body larger than ${maxBytes} bytes`);
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body) return await next();
    const declared = raw.headers.get("content-length");
    if (declared !== null && !raw.headers.has("transfer-encoding")) {
      if (Number(declared) > maxBytes) throw tooLarge();
      return await next();
    }
    const chunks: Uint8Array[] = [];
    let size = 0;
    const reader = raw.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
    const body = new Uint8Array(size);
    let off = 0;
    for (const ch of chunks) {
      body.set(ch, off);
      off += ch.length;
    }
    c.req.raw = new Request(raw.url, { method: raw.method, headers: raw.headers, body });
    await next();
  };
}
