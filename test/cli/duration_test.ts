import { assertEquals } from "../assert.ts";
import { formatAge, formatDuration, parseDuration } from "../../cli/duration.ts";

Deno.test("duration: parses unit components and bare seconds", () => {
  assertEquals(parseDuration("90s"), 90);
  assertEquals(parseDuration("10m"), 600);
  assertEquals(parseDuration("1h"), 3600);
  assertEquals(parseDuration("1h30m"), 5400);
  assertEquals(parseDuration("2d"), 172800);
  assertEquals(parseDuration("1d2h3m4s"), 93784);
  assertEquals(parseDuration("600"), 600);
  assertEquals(parseDuration("0s"), 0);
});

Deno.test("duration: rejects malformed input", () => {
  for (const bad of ["", "10x", "m", "1m1h", "1h1h", "-5s", "1.5h", "10 m", "ms", "5ms"]) {
    assertEquals(parseDuration(bad), null, bad);
  }
});

Deno.test("duration: formats compactly", () => {
  assertEquals(formatDuration(0), "0s");
  assertEquals(formatDuration(45), "45s");
  assertEquals(formatDuration(600), "10m");
  assertEquals(formatDuration(5400), "1h30m");
  assertEquals(formatDuration(90000), "1d1h");
});

Deno.test("duration: ages use the largest unit", () => {
  const now = Date.parse("2026-05-12T20:00:00Z");
  assertEquals(formatAge("2026-05-12T19:59:40Z", now), "20s");
  assertEquals(formatAge("2026-05-12T19:55:00Z", now), "5m");
  assertEquals(formatAge("2026-05-12T17:00:00Z", now), "3h");
  assertEquals(formatAge("2026-05-05T20:00:00Z", now), "7d");
  assertEquals(formatAge("2026-05-12T20:00:10Z", now), "0s"); // clock skew
  assertEquals(formatAge("not a date", now), "-");
});
