/**
 * Request body rules of the control plane's listeners:
 * - {@link bodyLimit}: the size limit (shared/body_limit.ts, also used by the agent's mTLS
 *   server), re-exported here;
 * - {@link requireJsonContentType}: a request that carries a body must send it as
 *   `Content-Type: application/json` (or `application/<x>+json`), else 415
 *   `unsupported_media_type` — every body of the public API is JSON.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "../../shared/errors.ts";

export { bodyLimit } from "../../shared/body_limit.ts";

const JSON_MEDIA_TYPE = /^application\/([\w.-]+\+)?json$/i;

/**
 * 415 `unsupported_media_type` for a request with a non-empty body whose `Content-Type` is
 * not JSON. Requests without a body (or with an empty one) pass whatever they declare. Mount
 * after {@link bodyLimit} (which buffers chunked bodies, so measuring one here is cheap).
 *
 * @throws ApiError 415 `unsupported_media_type` (details `{content_type}`)
 */
export function requireJsonContentType(): MiddlewareHandler {
  return async (c, next) => {
    const raw = c.req.raw;
    if (raw.body) {
      const mediaType = (raw.headers.get("content-type") ?? "").split(";")[0].trim();
      if (!JSON_MEDIA_TYPE.test(mediaType)) {
        const declared = raw.headers.get("content-length");
        const empty = declared !== null && !raw.headers.has("transfer-encoding")
          ? Number(declared) === 0
          : (await raw.clone().arrayBuffer()).byteLength === 0;
        if (!empty) {
          throw new ApiError(
            "unsupported_media_type",
            `request body must be JSON sent with Content-Type: application/json (got ${
              mediaType ? JSON.stringify(mediaType) : "none"
            })`,
            { content_type: mediaType || null },
          );
        }
      }
    }
    await next();
  };
}
