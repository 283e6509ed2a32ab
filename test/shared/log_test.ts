/**
 * The logger's safety net (shared/log.ts): whatever a caller passes, a line carries no URL
 * credentials and no value of a field named like a secret, at any depth.
 */
import { assert, assertEquals } from "../assert.ts";
import { createLogger, isSecretFieldName, redactLogRecord } from "../../shared/log.ts";

/** A debug logger whose lines are kept, parsed. */
function capture() {
  const lines: string[] = [];
  const log = createLogger("test", "debug", (l) => lines.push(l));
  return {
    log,
    lines,
    /** The last line without its timestamp. */
    last(): Record<string, unknown> {
      const { ts, ...rest } = JSON.parse(lines.at(-1)!);
      assert(typeof ts === "string");
      return rest;
    },
  };
}

Deno.test("log: URL credentials never reach a line, wherever the caller put them", async (t) => {
  const url = "http://backup:hunter2@nas.lan/images/img.qcow2";
  const shown = "http://***@nas.lan/images/img.qcow2";

  await t.step("in the message, a field, nested objects and arrays", () => {
    const c = capture();
    c.log.info(`image: downloading ${url}`, {
      image_url: url,
      source: { url, mirrors: [url, "https://plain.example/img.qcow2"] },
    });
    assertEquals(c.last(), {
      level: "info",
      component: "test",
      msg: `image: downloading ${shown}`,
      image_url: shown,
      source: { url: shown, mirrors: [shown, "https://plain.example/img.qcow2"] },
    });
  });

  await t.step("in errors (top level and nested), in field names, in with() fields", () => {
    const c = capture();
    const err = new Error(`download ${url}: HTTP 404`);
    c.log.with({ origin: url }).warn("vm: create failed", {
      err,
      causes: [{ err }],
      by_url: { [url]: 1 },
    });
    assertEquals(c.last(), {
      level: "warn",
      component: "test",
      msg: "vm: create failed",
      origin: shown,
      err: `download ${shown}: HTTP 404`,
      causes: [{ err: `download ${shown}: HTTP 404` }],
      by_url: { [shown]: 1 },
    });
    assert(!c.lines[0].includes("hunter2"), c.lines[0]);
  });

  await t.step("other schemes and several URLs in one string", () => {
    assertEquals(
      redactLogRecord("pull s3://AKIA:wJalr@bucket/x then ftp://u:p@ss@host/y"),
      "pull s3://***@bucket/x then ftp://***@host/y",
    );
  });
});

Deno.test("log: values of fields named like secrets are ***, at any depth", async (t) => {
  await t.step("names: whole words, any case or separator; ids and names stay", () => {
    const secret = [
      "password",
      "Password",
      "new_password",
      "passwd",
      "token",
      "access_token",
      "idToken",
      "refresh-token",
      "tokens",
      "secret",
      "client_secret",
      "clientSecret",
      "JWT_SECRET",
      "authorization",
      "Authorization",
      "proxy-authorization",
      "private_key",
      "privateKey",
      "ca_private_key",
      "password_hash",
    ];
    const plain = [
      "token_id",
      "tokenId",
      "token_type",
      "secret_name",
      "kid",
      "tokenizer",
      "passwordless",
      "key",
      "public_key",
      "email",
      "author",
      "url",
    ];
    assertEquals(secret.filter((n) => !isSecretFieldName(n)), []);
    assertEquals(plain.filter(isSecretFieldName), []);
  });

  await t.step("a line: secret values replaced, their siblings and null kept", () => {
    const c = capture();
    c.log.info("login", {
      email: "a@example.com",
      password: "pw-1",
      token_id: "6f1c",
      headers: { Authorization: "Bearer otx_abc", accept: "application/json" },
      keys: [{ kid: "k1", private_key: "-----BEGIN PRIVATE KEY-----" }],
      oidc: { id_token: { header: "eyJ" }, refresh_token: null },
    });
    assertEquals(c.last(), {
      level: "info",
      component: "test",
      msg: "login",
      email: "a@example.com",
      password: "***",
      token_id: "6f1c",
      headers: { Authorization: "***", accept: "application/json" },
      keys: [{ kid: "k1", private_key: "***" }],
      oidc: { id_token: "***", refresh_token: null },
    });
    for (const s of ["pw-1", "otx_abc", "BEGIN PRIVATE", "eyJ"]) {
      assert(!c.lines[0].includes(s), `${s} in ${c.lines[0]}`);
    }
  });

  await t.step("with() fields are redacted too", () => {
    const c = capture();
    c.log.with({ secret: "s3cr3t" }).debug("x");
    assertEquals(c.last().secret, "***");
  });
});

Deno.test("log: what JSON cannot carry still makes a line", () => {
  const c = capture();
  const loop: Record<string, unknown> = { name: "a" };
  loop.self = loop;
  const shared = { n: 1 };
  c.log.error("odd fields", {
    loop,
    twice: [shared, shared],
    big: 2n ** 70n,
    at: new Date("2026-11-30T10:00:00.000Z"),
  });
  assertEquals(c.last(), {
    level: "error",
    component: "test",
    msg: "odd fields",
    loop: { name: "a", self: "[circular]" },
    twice: [{ n: 1 }, { n: 1 }],
    big: "1180591620717411303424",
    at: "2026-11-30T10:00:00.000Z",
  });
});
