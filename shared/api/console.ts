/**
 * Serial console access (spec "Step 5 — console access"):
 *
 * 1. `POST /v1/vms/{name}/console` (`vm:console`: admin, operator, developer; a viewer may not
 *    type into a guest) → 201 {@link ConsoleTicketSchema}: a single-use token valid for
 *    `console.token_ttl_seconds` (default 30 s), stored only as a hash.
 * 2. `GET /v1/vms/{name}/console?token=…` upgrades to a WebSocket bridged by the control plane
 *    to the VM's agent over mTLS, and by the agent to QEMU's serial socket. Frames are raw
 *    bytes both ways (binary; text frames are taken as UTF-8 input). Refusals come before the
 *    upgrade as error envelopes: 401 `unauthenticated` (unknown or already used token), 401
 *    `token_expired`, 403 `permission_denied` (the token's user lost the permission), 404
 *    `vm_not_found`, 409 `vm_invalid_state` (QEMU not running), 502 `agent_unreachable`.
 *    The socket closes with 1000 when the VM stops, 1011 when the agent connection fails.
 *
 * The token travels in the query string because browsers cannot set headers on a WebSocket;
 * it is short-lived and redeemed on first use, so a leaked URL is worthless.
 *
 * @module
 */
import { z } from "zod";
import { TimestampSchema } from "./common.ts";

/** `POST /v1/vms/{name}/console` response. */
export const ConsoleTicketSchema = z.object({
  /** The single-use token (`otxcon_…`). */
  token: z.string(),
  expires_at: TimestampSchema,
  /** Path of the WebSocket relative to the API base URL, token included. */
  websocket_path: z.string(),
});
/** A console ticket. */
export type ConsoleTicket = z.infer<typeof ConsoleTicketSchema>;

/** `GET /v1/vms/{name}/console` query. */
export const ConsoleQuerySchema = z.object({ token: z.string().min(1).max(512) });

/** Prefix of console tokens. */
export const CONSOLE_TOKEN_PREFIX = "otxcon_";
