import { assertEquals } from "../assert.ts";
import {
  formatBytes,
  maskToken,
  renderJson,
  renderKeyValues,
  renderTable,
  renderYaml,
} from "../../cli/render.ts";

Deno.test("render: table columns are aligned, headers uppercased, no trailing spaces", () => {
  const out = renderTable(["name", "status", "pool"], [
    ["demo-vm", "running", "default"],
    ["a", "creating", ""],
  ]);
  assertEquals(
    out,
    "NAME      STATUS     POOL\n" +
      "demo-vm   running    default\n" +
      "a         creating\n",
  );
  const lines = out.trimEnd().split("\n");
  const col = (line: string, word: string) => line.indexOf(word);
  assertEquals(col(lines[0], "STATUS"), col(lines[1], "running"));
  assertEquals(col(lines[0], "POOL"), col(lines[1], "default"));
});

Deno.test("render: table with no rows prints the header", () => {
  assertEquals(renderTable(["name", "server", "current"], []), "NAME   SERVER   CURRENT\n");
});

Deno.test("render: key/values skip unset fields and indent sections", () => {
  assertEquals(
    renderKeyValues([
      ["name", "node-a"],
      ["endpoint", null],
      ["cordoned", "no"],
      ["resources", [["cpu_cores_total", 4], ["gone", undefined]]],
      ["vm_count", 0],
    ]),
    "name: node-a\ncordoned: no\nresources:\n  cpu_cores_total: 4\nvm_count: 0\n",
  );
});

Deno.test("render: json is pretty with 2 spaces, yaml is a document", () => {
  assertEquals(renderJson({ a: 1, b: [true] }), '{\n  "a": 1,\n  "b": [\n    true\n  ]\n}\n');
  assertEquals(renderYaml({ a: 1, b: "x" }), "a: 1\nb: x\n");
});

Deno.test("render: tokens are masked, keeping the otx_ prefix and 4 characters", () => {
  assertEquals(maskToken("otx_abcdefghijklmnopqrstuvwxyz0123"), "otx_abcd…(masked)");
  assertEquals(maskToken("otx_short"), "otx_…(masked)");
  assertEquals(maskToken("eyJhbGciOiJIUzI1NiJ9.payload.sig"), "eyJh…(masked)");
  assertEquals(maskToken("tiny"), "…(masked)");
});

Deno.test("render: byte sizes", () => {
  assertEquals(formatBytes(512), "512B");
  assertEquals(formatBytes(1536), "1.5KiB");
  assertEquals(formatBytes(80 * 1024 ** 3), "80.0GiB");
});
