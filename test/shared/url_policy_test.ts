/**
 * The image-fetch policy rule (shared/url_policy.ts) and URL credential redaction
 * (shared/url_redact.ts), as both the control plane and the agent apply them.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import {
  addressProblem,
  classifyAddress,
  DEFAULT_URL_POLICY,
  hostOf,
  urlPolicyProblem,
  UrlPolicySchema,
} from "../../shared/url_policy.ts";
import {
  hasCredentials,
  redactText,
  redactUrl,
  splitCredentials,
} from "../../shared/url_redact.ts";

Deno.test("url policy: address classes", async (t) => {
  const cases: [string, string][] = [
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["::1", "loopback"],
    ["0.0.0.0", "loopback"],
    ["::", "loopback"],
    ["::ffff:7f00:1", "loopback"],
    ["[::ffff:127.0.0.1]", "loopback"],
    ["::127.0.0.1", "loopback"],
    ["64:ff9b::7f00:1", "loopback"],
    ["2002:7f00:1::", "loopback"],
    ["169.254.169.254", "link_local"],
    ["fe80::1", "link_local"],
    ["::ffff:169.254.169.254", "link_local"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["192.168.1.10", "private"],
    ["100.64.0.1", "private"],
    ["fd00::5", "private"],
    ["8.8.8.8", "public"],
    ["2606:4700::1111", "public"],
    ["224.0.0.1", "special"],
    ["255.255.255.255", "special"],
    ["192.0.2.1", "special"],
    ["2001:db8::1", "special"],
    ["ff02::1", "special"],
  ];
  for (const [ip, cls] of cases) {
    await t.step(`${ip} is ${cls}`, () => assertEquals(classifyAddress(ip), cls));
  }
  await t.step(
    "non-canonical IPv4 forms are not addresses here (the URL parser normalises)",
    () => {
      assertThrows(() => classifyAddress("0x7f000001"));
      assertThrows(() => classifyAddress("127.1"));
      assertThrows(() => classifyAddress("nas.lan"));
    },
  );
});

Deno.test("url policy: every IP literal form of a URL is normalised before the check", async (t) => {
  const loopbackForms = [
    "http://127.0.0.1/img.qcow2",
    "http://0x7f000001/img.qcow2",
    "http://2130706433/img.qcow2",
    "http://017700000001/img.qcow2",
    "http://127.1/img.qcow2",
    "http://0x7f.1/img.qcow2",
    "http://127.0.0.1./img.qcow2",
    "http://[::1]/img.qcow2",
    "http://[::ffff:127.0.0.1]/img.qcow2",
    "http://[0:0:0:0:0:ffff:7f00:1]:8080/img.qcow2",
    "http://0/img.qcow2",
    "http://[::]/img.qcow2",
    "http://localhost/img.qcow2",
    "http://LOCALHOST./img.qcow2",
    "http://images.localhost:8080/img.qcow2",
    "http://user:pw@127.0.0.1/img.qcow2",
  ];
  for (const url of loopbackForms) {
    await t.step(`${url}: refused by default, allowed with allow_loopback`, () => {
      const problem = urlPolicyProblem(url, DEFAULT_URL_POLICY);
      assert(problem !== null, `${url} should be refused`);
      assertStringIncludes(problem, "images.url_policy");
      assertEquals(urlPolicyProblem(url, UrlPolicySchema.parse({ allow_loopback: true })), null);
    });
  }
  await t.step("link-local metadata endpoints are refused by default", () => {
    for (const u of ["http://169.254.169.254/latest/x.img", "http://[fe80::1]/x.img"]) {
      assertStringIncludes(urlPolicyProblem(u, DEFAULT_URL_POLICY)!, "link-local");
    }
    const ok = UrlPolicySchema.parse({ allow_link_local: true });
    assertEquals(urlPolicyProblem("http://169.254.169.254/x.img", ok), null);
  });
  await t.step("a NAS on the LAN and public hosts are allowed by default", () => {
    for (
      const u of [
        "http://192.168.1.5/img.qcow2",
        "http://10.0.0.2:8080/img.qcow2",
        "https://cloud-images.ubuntu.com/noble.img",
        "http://nas.lan/img.qcow2",
      ]
    ) assertEquals(urlPolicyProblem(u, DEFAULT_URL_POLICY), null, u);
  });
  await t.step("private ranges can be refused, and extra CIDRs denied", () => {
    const p = UrlPolicySchema.parse({ allow_private: false, deny_cidrs: ["203.0.0.0/16"] });
    assertStringIncludes(urlPolicyProblem("http://192.168.1.5/i.img", p)!, "allow_private");
    assertStringIncludes(urlPolicyProblem("http://203.0.7.7/i.img", p)!, "deny_cidrs");
    assertStringIncludes(urlPolicyProblem("http://[::ffff:203.0.7.7]/i.img", p)!, "deny_cidrs");
    assertEquals(urlPolicyProblem("http://203.1.7.7/i.img", p), null);
  });
  await t.step("special-purpose addresses are refused whatever the policy", () => {
    const all = UrlPolicySchema.parse({ allow_loopback: true, allow_link_local: true });
    assert(urlPolicyProblem("http://224.0.0.1/i.img", all) !== null);
    assert(urlPolicyProblem("http://255.255.255.255/i.img", all) !== null);
  });
  await t.step("messages name no port and nothing about what listens", () => {
    const m = urlPolicyProblem("http://127.0.0.1:6379/x.img", DEFAULT_URL_POLICY)!;
    assert(!m.includes("6379"), m);
    assertEquals(
      addressProblem("127.0.0.1", DEFAULT_URL_POLICY),
      "address 127.0.0.1 is loopback, refused by images.url_policy " +
        "(set images.url_policy.allow_loopback: true to allow it)",
    );
  });
  await t.step("hostOf", () => {
    assertEquals(hostOf("http://0x7f000001:9/x"), { host: "127.0.0.1", ip: true });
    assertEquals(hostOf("http://[::ffff:127.0.0.1]/x"), { host: "::ffff:7f00:1", ip: true });
    assertEquals(hostOf("http://NAS.lan./x"), { host: "nas.lan", ip: false });
  });
  await t.step("config: unknown keys and bad CIDRs are refused", () => {
    assert(!UrlPolicySchema.safeParse({ allow_everything: true }).success);
    assert(!UrlPolicySchema.safeParse({ deny_cidrs: ["10.0.0.0/99"] }).success);
  });
});

Deno.test("url credentials: redacted in views and messages, split for the download", async (t) => {
  await t.step("redactUrl", () => {
    assertEquals(redactUrl("http://user:pass@nas/img.qcow2"), "http://***@nas/img.qcow2");
    assertEquals(redactUrl("https://token@nas:8443/a/img.raw"), "https://***@nas:8443/a/img.raw");
    assertEquals(redactUrl("http://u:p@ss@nas/i.img"), "http://***@nas/i.img");
    assertEquals(redactUrl("http://nas/img.qcow2"), "http://nas/img.qcow2");
  });
  await t.step("redactText finds every URL in a message", () => {
    assertEquals(
      redactText("download http://a:b@h1/x.img: HTTP 404 (from https://c:d@h2/y.img)"),
      "download http://***@h1/x.img: HTTP 404 (from https://***@h2/y.img)",
    );
    assertEquals(redactText("no url here user@example.com"), "no url here user@example.com");
  });
  await t.step("splitCredentials", () => {
    const s = splitCredentials("http://us%40r:p%3Ass@nas/i.img");
    assertEquals(s.url, "http://nas/i.img");
    assertEquals(s.authorization, `Basic ${btoa("us@r:p:ss")}`);
    assertEquals(splitCredentials("http://nas/i.img"), {
      url: "http://nas/i.img",
      authorization: null,
    });
    assert(hasCredentials("http://u@nas/i.img"));
    assert(!hasCredentials("http://nas/i.img"));
  });
});
