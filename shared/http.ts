/**
 * Hono building blocks used by both the control plane and the agent: the error handler that
 * renders the wire envelope, the JSON content-type rule for request bodies, request validation
 * with zod, and request logging.
 *
 * @module
 */
import type { Context, Env, ErrorHandler, MiddlewareHandler, NotFoundHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { z } from "zod";
import { ApiError, parseOrThrow } from "./errors.ts";
import type { Logger } from "./log.ts";

/** Renders {@link ApiError}s as the wire envelope; anything else is a logged `internal_error`. */
export function errorHandler(log: Logger): ErrorHandler {
  return (err, c) => {
    if (err instanceof ApiError) {
      return c.json(err.toEnvelope(), err.status as 400);
    }
    if (err instanceof HTTPException) {
      const code = err.status === 401 ? "unauthenticated" : "validation_failed";
      return c.json({ error: { code, message: err.message } }, err.status);
    }
    log.error("unhandled error", { path: c.req.path, err: String(err?.stack ?? err) });
    return c.json({ error: { code: "internal_error", message: "internal error" } }, 500);
  };
}

/** 404 envelope for unknown routes. */
export const notFoundHandler: NotFoundHandler = (c) =>
  c.json(
    { error: { code: "not_found", message: `no route for ${c.req.method} ${c.req.path}` } },
    404,
  );

const JSON_MEDIA_TYPE = /^application\/([\w.-]+\+)?json$/i;

/**
 * True when `contentType` (a `Content-Type` header value, parameters allowed) names JSON:
 * `application/json` or `application/<x>+json` (RFC 6839 structured suffix), any case.
 */
export function isJsonMediaType(contentType: string | null | undefined): boolean {
  return JSON_MEDIA_TYPE.test(mediaTypeOf(contentType));
}

/** The media type of a `Content-Type` value: parameters dropped, trimmed ("" when absent). */
function mediaTypeOf(contentType: string | null | undefined): string {
  return (contentType ?? "").split(";")[0].trim();
}

/**
 * The JSON content-type rule of every listener whose request bodies are all JSON (the control
 * plane's public API, the agent's mTLS API; issue 9, "Content-Type: application/json required
 * on JSON routes"): a request with a non-empty body whose `Content-Type` is not JSON
 * ({@link isJsonMediaType}) is refused before any route runs, so nothing changes. Requests
 * without a body, or with an empty one, pass whatever they declare. Mount it app-wide after
 * the body-size limit (shared/body_limit.ts buffers chunked bodies, so measuring one here is
 * cheap).
 *
 * @throws ApiError 415 `unsupported_media_type` (details `{content_type}`: the declared media
 *   type, null when none)
 */
export function requireJsonContentType<E extends Env = Env>(): MiddlewareHandler<E> {
  return async (c, next) => {
    const raw = c.req.raw;
    if (raw.body) {
      const mediaType = mediaTypeOf(raw.headers.get("content-type"));
      if (!isJsonMediaType(mediaType)) {
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

/**
 * Reads and validates the JSON body with `schema`. The content type is not looked at here:
 * apps mount {@link requireJsonContentType}.
 *
 * @throws ApiError `validation_failed` when the body is not JSON or does not match
 */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw new ApiError("validation_failed", "request body must be a JSON object");
  }
  return parseOrThrow(schema, raw, "request body");
}

/**
 * Validates the query string with `schema`.
 *
 * @throws ApiError `validation_failed`
 */
export function queryOf<T extends z.ZodType>(c: Context, schema: T): z.infer<T> {
  return parseOrThrow(schema, c.req.query(), "query");
}

/** Logs one line per request: method, path, status, duration (ms). */
export function requestLogger<E extends Env>(log: Logger): MiddlewareHandler<E> {
  return async (c, next) => {
    const start = performance.now();
    await next();
    log.debug("http request", {
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      ms: Math.round(performance.now() - start),
    });
  };
}
