/**
 * The OpenAPI 3.1 description of the public API, generated from the app itself: every route
 * Hono knows (`app.routes`), with the zod schemas its `validate()` middleware checks (path,
 * query and JSON body; cp/routes/validate.ts records them) and the response schemas routes
 * declare with {@link responds}. Served at `GET /v1/openapi.json` and written to
 * `docs/openapi.json` (`deno task openapi`); a test fails when a route is missing or the
 * committed document is stale.
 *
 * Every operation also documents the error envelope (shared/errors.ts) as its `default`
 * response.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { z } from "zod";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { validatorSchema } from "./routes/validate.ts";

/** A route's declared response (see {@link responds}). */
interface ResponseDecl {
  status: number;
  schema: z.ZodType | null;
  description: string;
}

const RESPONSES = new WeakMap<MiddlewareHandler, ResponseDecl>();

/**
 * A no-op middleware declaring what a route answers on success, for the OpenAPI document:
 * `r.get("/", responds(200, VmListSchema, "the VMs"), handler)`. `schema` null: no body.
 */
export function responds(
  status: number,
  schema: z.ZodType | null,
  description = "success",
): MiddlewareHandler {
  const mw: MiddlewareHandler = async (_c, next) => await next();
  RESPONSES.set(mw, { status, schema, description });
  return mw;
}

/** JSON Schema (draft 2020-12, as OpenAPI 3.1 uses) of `schema`, as requests see it. */
function jsonSchema(schema: z.ZodType, io: "input" | "output"): Record<string, unknown> {
  const s = z.toJSONSchema(schema, { io, unrepresentable: "any" }) as Record<string, unknown>;
  delete s.$schema;
  return s;
}

/** `/v1/vms/:name` → `/v1/vms/{name}`. */
export function openApiPath(honoPath: string): string {
  return honoPath.replace(/:([A-Za-z_][A-Za-z0-9_]*)(\{[^}]*\})?/g, "{$1}");
}

/** What the generator reads of a Hono app: its flattened route table. */
export interface RoutedApp {
  routes: { method: string; path: string; handler: unknown }[];
}

/** The operations of `app`: method + OpenAPI path, the routes' handlers, in order. */
export function operationsOf(app: RoutedApp): Map<string, MiddlewareHandler[]> {
  const ops = new Map<string, MiddlewareHandler[]>();
  // Middleware mounted on every method (`use`) applies to all operations below its path.
  const shared = app.routes.filter((r) => r.method === "ALL");
  for (const r of app.routes) {
    if (r.method === "ALL") continue;
    const key = `${r.method.toLowerCase()} ${openApiPath(r.path)}`;
    const list = ops.get(key) ?? [];
    if (list.length === 0) {
      for (const m of shared) {
        const prefix = m.path.replace(/\/\*$/, "");
        if (m.path === "*" || m.path === "/*" || r.path.startsWith(prefix)) {
          list.push(m.handler as MiddlewareHandler);
        }
      }
    }
    list.push(r.handler as MiddlewareHandler);
    ops.set(key, list);
  }
  return ops;
}

/**
 * The OpenAPI 3.1 document of `app`.
 *
 * @example
 * ```ts
 * const doc = openApiDocument(publicApp(ctx), "0.1.0");
 * doc.paths["/v1/vms/{name}"].get; // { operationId: "get_v1_vms_name", parameters: [...], ... }
 * ```
 */
export function openApiDocument(app: RoutedApp, version: string) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [key, handlers] of operationsOf(app)) {
    const [method, path] = key.split(" ");
    const parameters: Record<string, unknown>[] = [];
    let requestBody: Record<string, unknown> | undefined;
    const responses: Record<string, unknown> = {
      default: {
        description: "error (`error.code` is stable: shared/errors.ts)",
        content: { "application/json": { schema: jsonSchema(ErrorEnvelopeSchema, "output") } },
      },
    };
    for (const h of handlers) {
      const v = validatorSchema(h);
      if (v && (v.target === "param" || v.target === "query")) {
        const s = jsonSchema(v.schema, "input");
        const props = (s.properties ?? {}) as Record<string, Record<string, unknown>>;
        const required = new Set((s.required ?? []) as string[]);
        for (const [name, schema] of Object.entries(props)) {
          parameters.push({
            name,
            in: v.target === "param" ? "path" : "query",
            required: v.target === "param" || required.has(name),
            schema,
          });
        }
      } else if (v && v.target === "json") {
        requestBody = {
          required: false,
          content: { "application/json": { schema: jsonSchema(v.schema, "input") } },
        };
      }
      const r = RESPONSES.get(h);
      if (r) {
        responses[String(r.status)] = {
          description: r.description,
          ...(r.schema
            ? { content: { "application/json": { schema: jsonSchema(r.schema, "output") } } }
            : {}),
        };
      }
    }
    // Path parameters not validated by a schema are still declared (OpenAPI requires it).
    for (const m of path.matchAll(/\{([^}]+)\}/g)) {
      if (!parameters.some((p) => p.in === "path" && p.name === m[1])) {
        parameters.push({ name: m[1], in: "path", required: true, schema: { type: "string" } });
      }
    }
    if (Object.keys(responses).length === 1) responses["2XX"] = { description: "success" };
    (paths[path] ??= {})[method] = {
      operationId: `${method}_${path.replace(/[{}]/g, "").replace(/[^A-Za-z0-9]+/g, "_")}`
        .replace(/_+$/, ""),
      ...(parameters.length ? { parameters } : {}),
      ...(requestBody ? { requestBody } : {}),
      responses,
    };
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Otherix API",
      version,
      description: "The control plane's public REST API (otherix-api). Authenticate with " +
        "`Authorization: Bearer <JWT or otx_ API token>`.",
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
    },
    security: [{ bearer: [] }],
    paths,
  };
}
