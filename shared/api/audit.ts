/**
 * The audit log on the wire (issue 9): `GET /v1/audit?limit=&cursor=&user=&action=`
 * (`audit:read`, admin) → `{items: AuditEntry[], next_cursor}`, newest first. Every mutating
 * call of the public API and every failed login is an entry (cp/audit/).
 *
 * @module
 */
import { z } from "zod";
import { ListQuerySchema, TimestampSchema } from "./common.ts";

/** What a call came to. */
export const AuditResultSchema = z.enum(["success", "failure", "denied"]);

/** One audit entry. */
export const AuditEntrySchema = z.object({
  id: z.string(),
  /** When the call was answered. */
  at: TimestampSchema,
  /** The caller (null: not authenticated). */
  user_id: z.string().nullable(),
  /** The caller's email, or the email a login was attempted for. */
  user_email: z.string().nullable(),
  /** What was done, e.g. `vm.create`, `vm.start`, `user.set_role`, `auth.login`. */
  action: z.string(),
  /** What it was done to (path parameters: `vm demo`, `user a@b.c`), or null. */
  target: z.string().nullable(),
  /** `success` (2xx/3xx), `denied` (401/403/429), `failure` (anything else). */
  result: AuditResultSchema,
  /** HTTP status answered. */
  status: z.number().int(),
  /** The error code when it failed. */
  code: z.string().nullable(),
  method: z.string(),
  path: z.string(),
  /** The peer address of the connection. */
  source: z.string(),
});
/** An audit entry. */
export type AuditEntry = z.infer<typeof AuditEntrySchema>;

/** `GET /v1/audit` query: paging plus `user` (id or email) and `action` filters. */
export const AuditQuerySchema = ListQuerySchema.extend({
  user: z.string().min(1).max(254).optional(),
  action: z.string().min(1).max(100).optional(),
});
/** Audit list query. */
export type AuditQuery = z.infer<typeof AuditQuerySchema>;
