/**
 * Building blocks shared by every wire schema: names, timestamps, pagination.
 *
 * @module
 */
import { z } from "zod";
import { PAGE_LIMITS } from "../constants.ts";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * A resource name: an RFC 1123 DNS label (lowercase alphanumerics and `-`, 1–63 chars,
 * starting and ending alphanumeric). UUID literals are refused (spec: "VM operations with
 * names" — names, never UUIDs, identify resources on the wire).
 */
export const ResourceNameSchema = z
  .string()
  .min(1, "must not be empty")
  .max(63, "must be at most 63 characters (RFC 1123 DNS label)")
  .regex(
    /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
    "must be a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric",
  )
  .refine((s) => !UUID_RE.test(s), "must be a name, not a UUID");

/** RFC 3339 timestamp string in UTC, e.g. `2026-11-21T10:00:00.000Z`. */
export const TimestampSchema = z.string().datetime();

/** An opaque pagination cursor as returned in `next_cursor`. */
export const CursorSchema = z.string().max(1024);

/** `?limit=&cursor=` query of every list endpoint. */
export const ListQuerySchema = z.object({
  limit: z.coerce.number().int().min(1).max(PAGE_LIMITS.max).default(PAGE_LIMITS.default),
  cursor: CursorSchema.optional(),
});
/** Parsed list query. */
export type ListQuery = z.infer<typeof ListQuerySchema>;

/** Wraps an item schema in the list envelope `{items, next_cursor}` (null on the last page). */
export function listOf<T extends z.ZodType>(item: T) {
  return z.object({ items: z.array(item), next_cursor: z.string().nullable() });
}

/** A CPU architecture in Debian/Go naming, as nodes report it and VMs request it. */
export const ArchitectureSchema = z.enum(["amd64", "arm64"]);
/** A CPU architecture. */
export type Architecture = z.infer<typeof ArchitectureSchema>;

/** Maps `Deno.build.arch` (`x86_64`/`aarch64`) to an {@link Architecture}. */
export function architectureOf(arch: string): Architecture {
  return arch === "aarch64" ? "arm64" : "amd64";
}

/** Lowercase hex SHA-256 (64 chars). */
export const Sha256HexSchema = z
  .string()
  .regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex characters (SHA-256)");
