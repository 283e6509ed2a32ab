/**
 * URL path segments of resource names (used by every command that names a resource).
 *
 * @module
 */
import { UsageError } from "./errors.ts";

/**
 * Encodes a path segment (a resource name) for a URL.
 *
 * @throws UsageError when `name` is empty, `.` or `..`: URL resolution drops or climbs such a
 *   segment (encoded as `%2E` too), so the request would reach another endpoint
 */
export function seg(name: string): string {
  if (name === "" || name === "." || name === "..") {
    throw new UsageError(`invalid name "${name}": must not be empty, "." or ".."`);
  }
  return encodeURIComponent(name);
}
