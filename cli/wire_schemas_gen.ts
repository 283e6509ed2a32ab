/**
 * Generates `cli/wire_schemas.json`: JSON Schemas (draft 2020-12) of the wire shapes the CLI's
 * start-up path validates without zod (`cli/wire_schemas.ts`), converted from the shared zod
 * schemas with zod's own `z.toJSONSchema` (input view: unknown keys allowed, as zod's
 * non-strict objects allow them). Conversion refuses anything JSON Schema cannot express
 * (refinements, transforms), so a schema here accepts exactly what its zod original accepts.
 *
 * `deno run -A cli/wire_schemas_gen.ts` rewrites the file; `--check` exits 1 when the committed
 * file differs (test/cli/wire_schemas_test.ts runs the same comparison): run it after changing
 * one of the schemas below in shared/.
 *
 * @module
 */
import { z } from "zod";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { VmSchema } from "../shared/api/vms.ts";

/**
 * The converted schemas by name: `Vm` (`GET /v1/vms/{name}`, the items of `GET /v1/vms`),
 * `ErrorEnvelope` (every error answer), `Named` (an item with a `name`: `__complete`).
 */
export const WIRE_SCHEMAS = {
  Vm: VmSchema,
  ErrorEnvelope: ErrorEnvelopeSchema,
  Named: z.object({ name: z.string() }),
} as const;

/** The generated file. */
export const WIRE_SCHEMAS_FILE = new URL("./wire_schemas.json", import.meta.url);

/**
 * The file's text: `{name: JSON Schema}` with stable key order and a trailing newline.
 *
 * @throws Error when a schema holds something JSON Schema cannot express
 */
export function wireSchemasText(): string {
  const out: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(WIRE_SCHEMAS)) {
    out[name] = z.toJSONSchema(schema, { io: "input", unrepresentable: "throw" });
  }
  return JSON.stringify(out, null, 2) + "\n";
}

if (import.meta.main) {
  const text = wireSchemasText();
  if (Deno.args.includes("--check")) {
    const committed = await Deno.readTextFile(WIRE_SCHEMAS_FILE).catch(() => "");
    if (committed !== text) {
      console.error("cli/wire_schemas.json is stale: run `deno run -A cli/wire_schemas_gen.ts`");
      Deno.exit(1);
    }
  } else {
    await Deno.writeTextFile(WIRE_SCHEMAS_FILE, text);
    console.log(`wrote ${WIRE_SCHEMAS_FILE.pathname}`);
  }
}
