/**
 * Response validators for the CLI's start-up path (`vm list`, `vm get`, `__complete`, and the
 * error envelope of every answer) that need neither zod nor the shared schema modules at run
 * time: the JSON Schemas in `wire_schemas.json`, generated from the shared zod schemas by
 * `wire_schemas_gen.ts` (a test keeps them identical), checked with `@cfworker/json-schema`
 * (small, no code generation). Loading zod and building the shared schemas costs more than
 * the rest of such a command (issue 10).
 *
 * Each validator has zod's `safeParse` shape, so {@link ApiClient.json} takes either.
 *
 * @module
 */
import { type OutputUnit, Validator } from "@cfworker/json-schema";
import type { ErrorEnvelope } from "../shared/errors.ts";
import type { Vm } from "../shared/api/vms.ts";
import type { ResponseSchema, SafeParseResult } from "./client.ts";
import schemas from "./wire_schemas.json" with { type: "json" };

/** Keywords whose failure only says "a part below failed": their leaf errors say what. */
const CONTAINER_KEYWORDS = new Set([
  "properties",
  "items",
  "prefixItems",
  "additionalProperties",
  "allOf",
  "$ref",
  "$dynamicRef",
]);

/** A validator of one generated schema (built on first use: nothing runs at import time). */
class JsonSchemaValidator<T> implements ResponseSchema<T> {
  readonly #schema: Record<string, unknown>;
  #validator?: Validator;

  constructor(schema: Record<string, unknown>) {
    this.#schema = schema;
  }

  /**
   * Checks `raw`; on failure the issues name the failing location as a dotted path
   * (`items.0.status`, `(root)` for the value itself) and what is wrong there.
   */
  safeParse(raw: unknown): SafeParseResult<T> {
    this.#validator ??= new Validator(this.#schema as never, "2020-12", false);
    let result: ReturnType<Validator["validate"]>;
    try {
      result = this.#validator.validate(raw);
    } catch (e) {
      // Values JSON cannot hold (undefined, functions): never in a parsed response body.
      return { success: false, error: { issues: [{ path: [], message: (e as Error).message }] } };
    }
    if (result.valid) return { success: true, data: raw as T };
    return { success: false, error: { issues: issuesOf(result.errors) } };
  }
}

/**
 * The leaf errors of a failed validation as zod-like issues (`path`, `message`); a missing
 * property is reported at its own path (`name: required`), as zod does.
 */
function issuesOf(errors: OutputUnit[]): { path: string[]; message: string }[] {
  const leaves = errors.filter((e) => !CONTAINER_KEYWORDS.has(e.keyword));
  return (leaves.length ? leaves : errors).map((e) => {
    const path = e.instanceLocation.replace(/^#\/?/, "").split("/").filter(Boolean)
      .map((p) => decodeURIComponent(p).replaceAll("~1", "/").replaceAll("~0", "~"));
    const missing = e.keyword === "required" && /required property "(.*)"/.exec(e.error);
    return missing
      ? { path: [...path, missing[1]], message: "required" }
      : { path, message: e.error };
  });
}

/** A VM as `GET /v1/vms/{name}` serves it (shared/api/vms.ts `VmSchema`). */
export const VmWire: ResponseSchema<Vm> = new JsonSchemaValidator<Vm>(schemas.Vm);

/** The error envelope `{"error": {code, message, details?}}` (shared/errors.ts). */
export const ErrorEnvelopeWire: ResponseSchema<ErrorEnvelope> = new JsonSchemaValidator<
  ErrorEnvelope
>(schemas.ErrorEnvelope);

/** Any list item with a string `name` (what `__complete` prints). */
export const NamedWire: ResponseSchema<{ name: string }> = new JsonSchemaValidator<
  { name: string }
>(schemas.Named);
