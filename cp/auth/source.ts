/**
 * The source address of a request on the public API: the peer of the TCP connection
 * (`Deno.serve`'s `remoteAddr`, handed to Hono as `c.env`). Forwarding headers
 * (`X-Forwarded-For`) are not trusted: anyone can send them.
 *
 * @module
 */
import type { Context } from "hono";

/** The peer address (`127.0.0.1`, `::1`), or `unknown` when not served over a socket (tests). */
export function sourceAddress(c: Context): string {
  const env = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  return env?.remoteAddr?.hostname ?? "unknown";
}
