/**
 * Hono building blocks used by both the control plane and the agent: the error handler that
 * renders the wire envelope, request validation with zod, and request logging.
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

/**
 * Reads and validates the JSON body with `schema`.
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
