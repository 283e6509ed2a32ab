/**
 * The start-up path's response validators (`cli/wire_schemas.ts`): the committed JSON Schemas
 * are what the generator makes from the shared zod schemas today, and they accept and refuse
 * what zod does, naming the same place.
 */
import { assertEquals } from "../assert.ts";
import { WIRE_SCHEMAS_FILE, wireSchemasText } from "../../cli/wire_schemas_gen.ts";
import { ErrorEnvelopeWire, VmWire } from "../../cli/wire_schemas.ts";
import { ErrorEnvelopeSchema } from "../../shared/errors.ts";
import { VmSchema } from "../../shared/api/vms.ts";
import { uuid, vmFixture } from "./fixtures.ts";

Deno.test("wire schemas: cli/wire_schemas.json is up to date with shared/", async () => {
  assertEquals(
    await Deno.readTextFile(WIRE_SCHEMAS_FILE),
    wireSchemasText(),
    "stale: run `deno run -A cli/wire_schemas_gen.ts`",
  );
});

Deno.test("wire schemas: VmWire accepts and refuses what VmSchema does, at the same path", () => {
  const vm = vmFixture() as Record<string, unknown>;
  const cases: [string, unknown][] = [
    ["the fixture", vm],
    ["unknown fields", { ...vm, future_field: { x: 1 } }],
    ["NICs and cloud-init", {
      ...vm,
      nics: [{
        index: 0,
        network: "lan",
        mac: "52:54:00:12:34:56",
        addresses: [{ address: "10.0.0.5", prefix_length: 24, source: "ipam" }],
      }],
      cloud_init: { status: "done", detail: null, at: "2026-05-12T19:57:00.000Z" },
    }],
    ["an id that is no UUID", { ...vm, id: "not-a-uuid" }],
    ["a string vcpus", { ...vm, vcpus: "2" }],
    ["a fractional memory", { ...vm, memory_mb: 1.5 }],
    ["an unknown status", { ...vm, status: "exploded" }],
    ["a timestamp that is not RFC 3339 UTC", { ...vm, created_at: "yesterday" }],
    ["a missing name", { ...vm, name: undefined }],
    ["a negative restart count", { ...vm, restart_count: -1 }],
    ["a bad last task status", {
      ...vm,
      last_task: { id: uuid(5), type: "vm.create", status: "x", error: null },
    }],
    ["an error without a code", { ...vm, error: { message: "m" } }],
    ["not an object", [vm]],
  ];
  for (const [what, value] of cases) {
    const raw = JSON.parse(JSON.stringify(value)); // as a response body arrives
    const zod = VmSchema.safeParse(raw);
    const wire = VmWire.safeParse(raw);
    assertEquals(wire.success, zod.success, what);
    if (!zod.success && !wire.success) {
      const paths = (issues: readonly { path: readonly PropertyKey[] }[]) =>
        issues.map((i) => i.path.map(String).join("."));
      const zodPaths = paths(zod.error.issues);
      for (const p of paths(wire.error.issues)) {
        // anyOf (a nullable object) reports the object itself; zod reports the field inside.
        const covered = zodPaths.some((z) => z === p || z.startsWith(`${p}.`));
        assertEquals(covered, true, `${what}: wire path "${p}" vs zod ${zodPaths}`);
      }
    }
  }
});

Deno.test("wire schemas: the error envelope, with and without details", () => {
  for (
    const raw of [
      { error: { code: "vm_not_found", message: "gone" } },
      { error: { code: "vm_busy", message: "busy", details: { task_id: "t" } } },
      { error: { code: "x" } },
      { error: "text" },
      { message: "no envelope" },
    ]
  ) {
    assertEquals(
      ErrorEnvelopeWire.safeParse(raw).success,
      ErrorEnvelopeSchema.safeParse(raw).success,
      JSON.stringify(raw),
    );
  }
});
