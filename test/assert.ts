/**
 * Minimal assertions for tests (JSR's `@std/assert` is unreachable here; `node:assert`
 * provides the same semantics).
 *
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Asserts `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg as string);
}
/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg as string);
}
/** Deep strict inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg as string);
}
/** Asserts `text` contains `part`. */
export function assertStringIncludes(text: string, part: string, msg?: string): void {
  nodeAssert.ok(
    text.includes(part),
    msg ?? `expected ${JSON.stringify(text)} to include ${JSON.stringify(part)}`,
  );
}
/** Asserts `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, msg?: string): void {
  nodeAssert.match(text, re, msg as string);
}
/** Asserts `fn` throws; returns the error. */
export function assertThrows(fn: () => unknown, msg?: string): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: msg ?? "expected function to throw" });
}
/** Asserts the promise from `fn` rejects; returns the error. */
export async function assertRejects(fn: () => Promise<unknown>, msg?: string): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: msg ?? "expected promise to reject" });
}
