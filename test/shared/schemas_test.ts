import { assert, assertEquals } from "../assert.ts";
import { ResourceNameSchema } from "../../shared/api/common.ts";
import { VmCreateRequestSchema } from "../../shared/api/vms.ts";
import { ApiError, ERROR_CODES, validationError } from "../../shared/errors.ts";

const base = { name: "demo-vm", image_url: "http://127.0.0.1/x.img", architecture: "amd64" };

Deno.test("schemas: VM names are DNS labels, never UUIDs", () => {
  for (const ok of ["a", "demo-vm", "vm1", "a".repeat(63)]) {
    assert(ResourceNameSchema.safeParse(ok).success, ok);
  }
  for (const bad of ["", "Demo", "-a", "a-", "a_b", "a.b", "a".repeat(64), crypto.randomUUID()]) {
    assert(!ResourceNameSchema.safeParse(bad).success, bad);
  }
});

Deno.test("schemas: VM create applies defaults and bounds", () => {
  const vm = VmCreateRequestSchema.parse(base);
  assertEquals([vm.vcpus, vm.memory_mb, vm.disk_gib], [1, 512, 10]);
  const bad = [
    { ...base, image_url: "ftp://h/x.img" },
    { ...base, image_url: "file:///etc/passwd" },
    { ...base, image_url: "http://h/dir/" },
    { ...base, image_url: "not-a-url" },
    { ...base, image_url: "http://h/.hidden.img" },
    { ...base, image_url: "http://h/x.img.sha256" },
    { ...base, image_url: "http://h/" + "a".repeat(249) },
    { ...base, image_url: "http://h/" + "a".repeat(2048) + ".img" },
    { ...base, vcpus: 0 },
    { ...base, vcpus: 1.5 },
    { ...base, memory_mb: 1 },
    { ...base, disk_gib: 0 },
    { ...base, image_sha256: "ABC" },
    { ...base, architecture: "riscv64" },
    { ...base, user_data: "x".repeat(64 * 1024 + 1) },
    { ...base, unexpected: true },
    { name: "demo-vm" },
  ];
  for (const b of bad) {
    assert(!VmCreateRequestSchema.safeParse(b).success, JSON.stringify(b).slice(0, 80));
  }
});

Deno.test("errors: validation errors carry field paths and the catalogue status", () => {
  const r = VmCreateRequestSchema.safeParse({ ...base, vcpus: 0 });
  assert(!r.success);
  const err = validationError(r.error);
  assertEquals(err.code, "validation_failed");
  assertEquals(err.status, 400);
  assertEquals((err.details!.fields as { path: string }[])[0].path, "vcpus");
  assertEquals(new ApiError("vm_not_found", "x").status, 404);
  assertEquals(ERROR_CODES.token_expired, 401);
  assertEquals(ERROR_CODES.no_eligible_nodes, 409);
});

Deno.test("schemas: a non-URL image_url is a validation issue, not an exception", () => {
  const r = VmCreateRequestSchema.safeParse({ ...base, image_url: "not-a-url" });
  assert(!r.success);
  assertEquals(r.error.issues.map((i) => [i.path.join("."), i.message]), [
    ["image_url", "must be an http(s) URL"],
  ]);
});
