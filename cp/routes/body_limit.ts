/**
 * Request body rules of the control plane's listeners, both shared with the agent's mTLS
 * server and re-exported here:
 * - {@link bodyLimit}: the size limit (shared/body_limit.ts);
 * - {@link requireJsonContentType}: a request that carries a body must send it as
 *   `Content-Type: application/json` (or `application/<x>+json`), else 415
 *   `unsupported_media_type` — every body of the public API is JSON (shared/http.ts).
 *
 * @module
 */
export { bodyLimit } from "../../shared/body_limit.ts";
export { requireJsonContentType } from "../../shared/http.ts";
