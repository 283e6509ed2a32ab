import { assertEquals } from "../assert.ts";
import { confirm, LineReader, type Prompter, SecretLineEditor } from "../../cli/prompt.ts";

const bytes = (s: string) => new TextEncoder().encode(s);

Deno.test("prompt: secret editor handles backspace, multibyte and Enter", () => {
  const ed = new SecretLineEditor();
  assertEquals(ed.feed(bytes("pässx")), "more");
  assertEquals(ed.feed(new Uint8Array([0x7f])), "more"); // remove "x"
  assertEquals(ed.feed(bytes("wörd")), "more");
  assertEquals(ed.feed(new Uint8Array([0x7f, 0x7f, 0x7f])), "more"); // remove "örd" incl. 2-byte ö
  assertEquals(ed.feed(bytes("!\rnext")), "done");
  assertEquals(ed.value(), "pässw!");
  assertEquals(new TextDecoder().decode(ed.rest), "next");
});

Deno.test("prompt: secret editor aborts on Ctrl-C and on Ctrl-D with an empty line", () => {
  const a = new SecretLineEditor();
  assertEquals(a.feed(bytes("abc\x03")), "abort");
  const b = new SecretLineEditor();
  assertEquals(b.feed(new Uint8Array([0x04])), "abort");
  const c = new SecretLineEditor();
  assertEquals(c.feed(bytes("abc\x15xy\x04")), "done"); // Ctrl-U clears
  assertEquals(c.value(), "xy");
});

Deno.test("prompt: line reader splits lines across chunks and keeps the rest", async () => {
  const chunks = [bytes("fir"), bytes("st\r\nsecond\nthi"), bytes("rd")];
  const reader = new LineReader({
    read(buf) {
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      buf.set(c);
      return Promise.resolve(c.length);
    },
  });
  assertEquals(await reader.readLine(), "first");
  assertEquals(await reader.readLine(), "second");
  assertEquals(await reader.readLine(), "third");
  assertEquals(await reader.readLine(), null);
});

Deno.test("prompt: confirm accepts only y/yes", async () => {
  const answer = (a: string | null): Prompter => ({
    line: () => Promise.resolve(a),
    secret: () => Promise.resolve(a),
  });
  assertEquals(await confirm(answer("y"), "ok?"), true);
  assertEquals(await confirm(answer("YES"), "ok?"), true);
  assertEquals(await confirm(answer(""), "ok?"), false);
  assertEquals(await confirm(answer("no"), "ok?"), false);
  assertEquals(await confirm(answer(null), "ok?"), false);
});
