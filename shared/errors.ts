/**
 * The stable error-code catalogue (spec: troubleshooting reference) and the wire error
 * envelope `{"error": {"code", "message", "details"}}` (DESIGN.md, wire conventions).
 *
 * This is the one place where a code and its HTTP status are defined; the control plane,
 * the agent and the CLI all import it.
 *
 * @module
 */
import { z } from "zod";

/** Every stable error code with the HTTP status it is served with. */
export const ERROR_CODES = {
  // request shape and identity
  validation_failed: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  conflict: 409,
  // resources
  vm_not_found: 404,
  vm_already_exists: 409,
  /**
   * The VM's status does not allow the operation (start a running VM, …): details.status on
   * the public API, details.phase from an agent.
   */
  vm_invalid_state: 409,
  /** Another task is in flight on the VM; details.task_id. */
  vm_busy: 409,
  /** No NIC of the VM has a known address (`otherix vm ssh`). */
  vm_has_no_address: 409,
  /** cloud-init reported an error on the VM's console (`vm create --wait=cloud-init`). */
  cloud_init_failed: 409,
  task_not_found: 404,
  /** A task was cancelled (a `vm delete` cancels the VM's in-flight create). */
  task_cancelled: 409,
  node_not_found: 404,
  pool_not_found: 404,
  pool_not_on_node: 409,
  pool_name_ambiguous: 409,
  no_eligible_nodes: 409,
  path_not_allowed: 400,
  default_pool_not_set: 400,
  /** The agent could not scan a pool directory (statfs, listing); the task error says why. */
  pool_scan_failed: 500,
  network_not_found: 404,
  network_already_exists: 409,
  /** A network's subnet overlaps another network's (details: subnet, network, network_subnet). */
  network_subnet_overlap: 409,
  /** No free address is left in the network's subnet (details: network, subnet). */
  network_addresses_exhausted: 409,
  /**
   * An agent could not set a network up on its node (a missing host bridge, an `ip`, dnsmasq
   * or iptables failure); the message has the tool's own words.
   */
  network_setup_failed: 500,
  /** A request body that is not `Content-Type: application/json` (details.content_type). */
  unsupported_media_type: 415,
  /**
   * Too many failed logins for an email or from an address: retry after the `Retry-After`
   * header's seconds (details.retry_after_seconds).
   */
  too_many_requests: 429,
  // bootstrap
  token_expired: 401,
  token_exhausted: 401,
  // agent / node
  agent_unreachable: 502,
  node_not_ready: 409,
  // task errors raised on the agent (served with these statuses when synchronous)
  qemu_spawn_failed: 500,
  image_unavailable: 502,
  checksum_mismatch: 422,
  download_failed: 502,
  vm_create_failed: 500,
  vm_delete_failed: 500,
  /** A lifecycle verb (start, stop, …) failed on the agent for an unexpected reason. */
  vm_action_failed: 500,
  /** An event stream asked to resume from a revision older than the retained history. */
  revision_compacted: 410,
  // infrastructure
  store_unavailable: 503,
  internal_error: 500,
} as const;

/** A stable error code (a key of {@link ERROR_CODES}). */
export type ErrorCode = keyof typeof ERROR_CODES;

/** zod schema of an error code, for validating wire envelopes. */
export const ErrorCodeSchema = z.enum(
  Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]],
);

/** Transport-failure codes the CLI prints when no API envelope was received (spec: CLI). */
export const TRANSPORT_ERROR_CODES = [
  "request_timeout",
  "connection_refused",
  "request_failed",
] as const;

/** `{code, message, details?}` as carried in envelopes and task errors. */
export const ErrorInfoSchema = z.object({
  code: z.string(),
  message: z.string(),
  details: z.record(z.string(), z.unknown()).optional(),
});
/** An error as carried on the wire. */
export type ErrorInfo = z.infer<typeof ErrorInfoSchema>;

/** The wire error envelope. */
export const ErrorEnvelopeSchema = z.object({ error: ErrorInfoSchema });
/** The wire error envelope. */
export type ErrorEnvelope = z.infer<typeof ErrorEnvelopeSchema>;

/**
 * An error with a stable code. Thrown anywhere in the control plane or agent; the HTTP error
 * middleware turns it into the envelope with the catalogue's status.
 *
 * @example
 * ```ts
 * throw new ApiError("vm_not_found", `vm "${name}" not found`);
 * ```
 */
export class ApiError extends Error {
  /** The stable code. */
  readonly code: ErrorCode;
  /** Structured, machine-readable context (field errors, candidates, …). */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.details = details;
  }

  /** HTTP status for this code, from {@link ERROR_CODES}. */
  get status(): number {
    return ERROR_CODES[this.code];
  }

  /** The wire form. */
  toInfo(): ErrorInfo {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }

  /** The wire envelope. */
  toEnvelope(): ErrorEnvelope {
    return { error: this.toInfo() };
  }
}

/** True when `code` is a catalogued code. */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CODES, code);
}

/**
 * Turns a zod error into `validation_failed` with per-field details
 * (`details.fields: [{path: "a.b", message}]`).
 */
export function validationError(error: z.ZodError, what = "request"): ApiError {
  const fields = error.issues.map((i) => ({
    path: i.path.map(String).join("."),
    message: i.message,
  }));
  const summary = fields.map((f) => (f.path ? `${f.path}: ${f.message}` : f.message)).join("; ");
  return new ApiError("validation_failed", `invalid ${what}: ${summary}`, { fields });
}

/** Parses `value` with `schema` or throws `validation_failed` (see {@link validationError}). */
export function parseOrThrow<T extends z.ZodType>(
  schema: T,
  value: unknown,
  what?: string,
): z.infer<T> {
  const result = schema.safeParse(value);
  if (!result.success) throw validationError(result.error, what);
  return result.data;
}
