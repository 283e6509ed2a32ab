// deno-lint-ignore-file no-explicit-any -- the document is inspected dynamically
/**
 * The OpenAPI document (cp/openapi.ts): every route of the public API is in it, it passes a
 * real OpenAPI 3.1 validator, request schemas come from the routes' zod schemas, the served
 * document is the generated one, and docs/openapi.json is current.
 */
import { Validator } from "@seriousme/openapi-schema-validator";
import { assert, assertEquals } from "../assert.ts";
import { publicApp } from "../../cp/app.ts";
import { openApiDocument, openApiPath } from "../../cp/openapi.ts";
import { OTHERIX_VERSION } from "../../shared/version.ts";
import { OPENAPI_DOC, openApiText } from "../../scripts/openapi.ts";
import { LogCapture, startTestCp } from "./fixtures.ts";

Deno.test("openapi: generated from the routes, valid, served, committed", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-openapi-" });
  const cp = await startTestCp(dir, new LogCapture());
  try {
    const app = publicApp(cp.ctx);
    const doc = openApiDocument(app, OTHERIX_VERSION) as any;

    await t.step("every route of the app is an operation", () => {
      const routes = app.routes.filter((r) => r.method !== "ALL")
        .map((r) => `${r.method.toLowerCase()} ${openApiPath(r.path)}`);
      assert(routes.length > 30, `${routes.length} routes`);
      for (const r of new Set(routes)) {
        const [method, path] = r.split(" ");
        assert(doc.paths[path]?.[method], `missing from the document: ${r}`);
      }
    });

    await t.step("a real OpenAPI 3.1 validator accepts it", async () => {
      const v = new Validator();
      const res = await v.validate(doc);
      assertEquals(res, { valid: true }, JSON.stringify(res).slice(0, 2000));
      assertEquals(v.version, "3.1");
    });

    await t.step("request schemas come from the routes' zod schemas", () => {
      const create = doc.paths["/v1/vms"].post;
      const body = create.requestBody.content["application/json"].schema;
      for (const field of ["name", "image_url", "architecture", "vcpus", "memory_mb"]) {
        assert(field in body.properties, `vm create body has ${field}`);
      }
      assertEquals(body.required.includes("name"), true);
      assert(create.parameters.some((p: any) => p.name === "dry_run" && p.in === "query"));
      const get = doc.paths["/v1/vms/{name}"].get;
      assert(get.parameters.some((p: any) => p.name === "name" && p.in === "path" && p.required));
      assert(doc.paths["/v1/vms/{name}"].delete.responses.default, "the error envelope");
    });

    await t.step("GET /v1/openapi.json serves it without credentials", async () => {
      const res = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/openapi.json`);
      assertEquals(res.status, 200);
      const served = await res.json();
      assertEquals(Object.keys(served.paths).sort(), Object.keys(doc.paths).sort());
    });

    await t.step("docs/openapi.json is current (`deno task openapi` rewrites it)", async () => {
      assertEquals(await Deno.readTextFile(OPENAPI_DOC), openApiText());
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
