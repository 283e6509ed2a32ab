import { assertEquals } from "../assert.ts";
import { checkPoolPath, joinPoolPath } from "../../cp/pools/paths.ts";

const PREFIXES = ["/var/lib/otherix/pools/"];
const ok = (p: string, prefixes = PREFIXES) => checkPoolPath(p, prefixes).ok;

Deno.test("pool path gate: boundary-safe prefix match", () => {
  assertEquals(ok("/var/lib/otherix/pools/default"), true);
  assertEquals(ok("/var/lib/otherix/pools/a/b"), true);
  assertEquals(ok("/var/lib/otherix/pools-evil/x"), false);
  assertEquals(ok("/var/lib/otherix/pools-evil/"), false);
  assertEquals(ok("/var/lib/otherix/poolsx"), false);
  assertEquals(ok("/var/lib/otherix/pools"), false, "the prefix itself is not a pool");
  assertEquals(ok("/var/lib/otherix/pools/"), false);
  assertEquals(ok("/var/lib/otherix/pools-evil/x", ["/var/lib/otherix/pools"]), false);
  assertEquals(ok("/var/lib/otherix/pools/x", ["/var/lib/otherix/pools"]), true);
  assertEquals(ok("/srv/p", ["/var/lib/otherix/pools/", "/srv/"]), true);
  assertEquals(ok("/anything", ["/"]), true);
});

Deno.test("pool path gate: absolute, normalized, ≤1024 bytes", () => {
  assertEquals(ok("var/lib/otherix/pools/x"), false);
  assertEquals(ok("/var/lib/otherix/pools/../../../etc"), false);
  assertEquals(ok("/var/lib/otherix/pools/./x"), false);
  assertEquals(ok("/var/lib/otherix/pools//x"), false);
  assertEquals(ok("/var/lib/otherix/pools/x/"), true, "a trailing slash is tolerated");
  const base = "/var/lib/otherix/pools/";
  assertEquals(ok(base + "a".repeat(1024 - base.length)), true);
  assertEquals(ok(base + "a".repeat(1025 - base.length)), false);
  // Bytes, not characters: 'é' is two bytes.
  assertEquals(ok(base + "é".repeat(Math.ceil((1025 - base.length) / 2))), false);
  const r = checkPoolPath("/etc/x", PREFIXES);
  assertEquals(r.ok, false);
  if (!r.ok) assertEquals(r.reason.includes("allowed_path_prefixes"), true);
});

Deno.test("pool path join", () => {
  assertEquals(joinPoolPath("/var/lib/otherix/pools", "default"), "/var/lib/otherix/pools/default");
  assertEquals(
    joinPoolPath("/var/lib/otherix/pools/", "default"),
    "/var/lib/otherix/pools/default",
  );
  assertEquals(joinPoolPath("/", "default"), "/default");
});
