/**
 * The first call of a join (an agent's bootstrap, a control-plane replica's join):
 * `GET {url}/v1/ca` before the cluster CA is trusted, and the pin check of what it returned.
 *
 * @module
 */
import { request } from "node:https";
import { type CaResponse, CaResponseSchema } from "./api/nodes.ts";

/** Largest `/v1/ca` body read from a not-yet-authenticated server, bytes. */
export const MAX_CA_RESPONSE_BYTES = 1024 * 1024;

/**
 * `GET {cpUrl}/v1/ca` WITHOUT verifying the server certificate (the CA is not trusted yet;
 * the caller pins it by fingerprint). Uses `node:https` because Deno's `fetch` cannot skip
 * verification per request. At most {@link MAX_CA_RESPONSE_BYTES} of body are read (the
 * server is not authenticated yet).
 *
 * @throws Error `fetch /v1/ca: <error>` (transport error, timeout,
 *   non-2xx, oversized or malformed body)
 */
export function fetchCaUnverified(cpUrl: string, timeoutMs = 15_000): Promise<CaResponse> {
  const url = cpUrl.replace(/\/+$/, "") + "/v1/ca";
  const fail = (why: string) => new Error(`fetch /v1/ca: ${why}`);
  return new Promise((resolve, reject) => {
    if (!url.startsWith("https://")) {
      reject(fail(`the URL must be https://, got ${cpUrl}`));
      return;
    }
    const req = request(
      url,
      // `ca: []`: trust nothing (the pin decides). Without an explicit `ca`, Deno's node
      // compat loads system and NODE_EXTRA_CA_CERTS roots, which needs `--allow-sys` in full.
      { method: "GET", rejectUnauthorized: false, ca: [], timeout: timeoutMs },
      (res) => {
        const chunks: Uint8Array[] = [];
        let size = 0;
        res.on("data", (c: Uint8Array) => {
          size += c.length;
          if (size > MAX_CA_RESPONSE_BYTES) {
            req.destroy(new Error(`response larger than ${MAX_CA_RESPONSE_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("error", (e: Error) => reject(fail(e.message)));
        res.on("end", () => {
          if (size > MAX_CA_RESPONSE_BYTES) {
            reject(fail(`response larger than ${MAX_CA_RESPONSE_BYTES} bytes`));
            return;
          }
          const text = new TextDecoder().decode(concat(chunks));
          if ((res.statusCode ?? 0) < 200 || (res.statusCode ?? 0) > 299) {
            reject(fail(`HTTP ${res.statusCode}`));
            return;
          }
          try {
            const parsed = CaResponseSchema.safeParse(JSON.parse(text));
            if (!parsed.success) throw new Error("response is not {ca_pem, fingerprint}");
            resolve(parsed.data);
          } catch (e) {
            reject(fail(e instanceof Error ? e.message : String(e)));
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    req.on("error", (e: Error) => reject(fail(dialError(e))));
    req.end();
  });
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/**
 * A transport error worded like Go's dialer, as the spec's bootstrap table quotes it: a refused
 * connection is `dial tcp <addr>:<port>: connection refused`; other errors keep their message.
 */
function dialError(e: Error): string {
  const err = e as Error & { code?: string; address?: string; port?: number };
  if (err.code === "ECONNREFUSED" && err.address && err.port) {
    const host = err.address.includes(":") ? `[${err.address}]` : err.address;
    return `dial tcp ${host}:${err.port}: connection refused`;
  }
  return e.message;
}
