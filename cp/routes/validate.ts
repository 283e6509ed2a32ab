/**
 * Request validation for Hono routes with the shared zod schemas, through Hono's validator
 * middleware (`@hono/zod-validator`), failing with our envelope: 400 `validation_failed`,
 * `details.fields: [{path, message}]` (`shared/errors.ts` {@link validationError}), never
 * `@hono/zod-validator`'s own `{success: false, error}` body.
 *
 * A route reads the parsed value with `c.req.valid(target)`, typed from the schema's output:
 *
 * ```ts
 * r.get("/", validate("query", EventsQuerySchema), (c) => {
 *   const q = c.req.valid("query"); // EventsQuery
 * });
 * ```
 *
 * Every control-plane route takes its input through it (path, query, body).
 *
 * @module
 */
import { isJsonMediaType } from "../../shared/http.ts";
import { zValidator } from "@hono/zod-validator";
import type { ValidationTargets } from "hono";
import type { z } from "zod";
import { ApiError, validationError } from "../../shared/errors.ts";

/** What each target is called in a `validation_failed` message (`invalid query: …`). */
const WHAT: Record<keyof ValidationTargets, string> = {
  json: "request body",
  form: "form body",
  query: "query",
  param: "path",
  header: "headers",
  cookie: "cookies",
};

/** What each `validate()` middleware checks, for the OpenAPI document (cp/openapi.ts). */
const SCHEMAS = new WeakMap<object, { target: keyof ValidationTargets; schema: z.ZodType }>();

/** The target and schema a middleware made by {@link validate} checks (undefined: not one). */
export function validatorSchema(
  mw: unknown,
): { target: keyof ValidationTargets; schema: z.ZodType } | undefined {
  return typeof mw === "function" ? SCHEMAS.get(mw) : undefined;
}

/**
 * Middleware validating `target` (`json` body, `query`, `param`, `header`, …) of the request
 * with `schema`; the parsed (defaults applied, transformed) value is available as
 * `c.req.valid(target)`.
 *
 * For `json`, a request without a body validates `{}` (verbs whose body is optional accept
 * none), and a non-empty body must be JSON sent as `application/json`. (Hono's validator
 * silently validates `{}` when the content type is not JSON and rejects an empty JSON body,
 * so the body is read here and handed to the same zod parse.)
 *
 * @throws ApiError 400 `validation_failed` (details.fields per issue) when the value does not
 *   match; for `json` also when the body is not JSON or not sent as `application/json`
 */
export function validate<T extends z.ZodType, Target extends keyof ValidationTargets>(
  target: Target,
  schema: T,
) {
  const inner = zValidator(target, schema, (result) => {
    if (!result.success) throw validationError(result.error as unknown as z.ZodError, WHAT[target]);
  });
  if (target !== "json") {
    SCHEMAS.set(inner, { target, schema });
    return inner;
  }
  const json: typeof inner = async (c, next) => {
    const text = await c.req.text();
    let raw: unknown = {};
    if (text.trim() !== "") {
      if (!isJsonMediaType(c.req.header("content-type"))) {
        throw new ApiError(
          "validation_failed",
          "request body must be JSON sent with Content-Type: application/json",
        );
      }
      try {
        raw = JSON.parse(text);
      } catch {
        throw new ApiError("validation_failed", "request body must be a JSON object");
      }
    }
    const result = await schema.safeParseAsync(raw);
    if (!result.success) throw validationError(result.error, WHAT.json);
    c.req.addValidatedData("json", result.data as object);
    await next();
  };
  SCHEMAS.set(json, { target, schema });
  return json;
}
