/**
 * `deno task openapi`: writes docs/openapi.json, the OpenAPI 3.1 document of the public API
 * (cp/openapi.ts), generated from the routes and their zod schemas. `--check` exits 1 when the
 * committed file differs (the test suite runs the same comparison).
 *
 * @module
 */
import { publicApp } from "../cp/app.ts";
import { parseApiConfig } from "../cp/config.ts";
import type { CpContext } from "../cp/context.ts";
import { openApiDocument } from "../cp/openapi.ts";
import { createLogger } from "../shared/log.ts";
import { OTHERIX_VERSION } from "../shared/version.ts";

/** The document's JSON text (stable key order, trailing newline). */
export function openApiText(): string {
  // Building the app only wires routes; nothing here is called until a request arrives.
  const ctx = {
    cfg: parseApiConfig(""),
    log: createLogger("openapi", "error"),
    now: () => new Date(),
  } as unknown as CpContext;
  return JSON.stringify(openApiDocument(publicApp(ctx), OTHERIX_VERSION), null, 2) + "\n";
}

/** Where the committed document lives. */
export const OPENAPI_DOC = new URL("../docs/openapi.json", import.meta.url);

if (import.meta.main) {
  const text = openApiText();
  if (Deno.args.includes("--check")) {
    const committed = await Deno.readTextFile(OPENAPI_DOC).catch(() => "");
    if (committed !== text) {
      console.error("docs/openapi.json is stale: run `deno task openapi`");
      Deno.exit(1);
    }
  } else {
    await Deno.writeTextFile(OPENAPI_DOC, text);
    console.log(`wrote ${OPENAPI_DOC.pathname}`);
  }
}
