/**
 * Request body size limit for Hono apps, on every listener (the public API, the control
 * plane's agent port, the agent's mTLS server): 400 `validation_failed` when a body exceeds
 * `maxBytes` — judged on the declared `content-length` before anything is read, or counted
 * while reading a chunked body (never buffering more than `maxBytes`). Unlike Hono's
 * `bodyLimit`, the rebuilt request does not copy `request.signal` (whose access makes
 * `Deno.serve` print a legacy-abort warning).
 *
 * @module
 */
import type { Env, MiddlewareHandler } from "hono";
import { ApiError } from "./errors.ts";

/**
 * The body-limit middleware (`maxBytes`: bytes).
 *
 * @throws ApiError 400 `validation_failed` "request body larger than N bytes"
 */
export function bodyLimit<E extends Env = Env>(maxBytes: number): MiddlewareHandler<E> {
  const tooLarge = () =>
    new ApiError("validation_failed", `request body larger than ${maxBytes} bytes`, {
      max_bytes: maxBytes,
    });
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body) return await next();
    const declared = raw.headers.get("content-length");
    if (declared !== null && !raw.headers.has("transfer-encoding")) {
      if (!/^\d+$/.test(declared.trim()) || Number(declared) > maxBytes) {
        await raw.body.cancel().catch(() => {});
        throw tooLarge();
      }
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
