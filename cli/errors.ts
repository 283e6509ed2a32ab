/**
 * Errors the CLI reports, each rendered as one stderr line with a stable, shell-parseable
 * prefix (spec: "Error classification"):
 *
 * - `api_error: <code>: <message>` — the control plane answered with an error envelope
 *   (or an async task failed with that code);
 * - `request_timeout: …`, `connection_refused: …`, `request_failed: …` — transport failures
 *   (no envelope was received, or the response was not what the schema expects);
 * - `error: …` — usage and local configuration problems.
 *
 * Every one of them exits the process with status 1.
 *
 * @module
 */
import type { TRANSPORT_ERROR_CODES } from "../shared/errors.ts";

/** Base class of every error the CLI renders itself (anything else is a bug). */
export abstract class CliError extends Error {
  /** The single stderr line for this error (without trailing newline). */
  abstract render(): string;
}

/** The control plane answered with `{"error": {code, message, details}}`, or a task failed. */
export class ApiCallError extends CliError {
  /** Stable error code (e.g. `vm_not_found`). */
  readonly code: string;
  /** Structured context from the envelope, if any. */
  readonly details?: Record<string, unknown>;
  /** HTTP status, when the error came from a response (absent for task errors). */
  readonly status?: number;

  constructor(code: string, message: string, details?: Record<string, unknown>, status?: number) {
    super(message);
    this.name = "ApiCallError";
    this.code = code;
    this.details = details;
    this.status = status;
  }

  render(): string {
    return `api_error: ${this.code}: ${this.message}`;
  }
}

/** A transport-level failure code. */
export type TransportErrorCode = typeof TRANSPORT_ERROR_CODES[number];

/** No usable answer was received: timeout, refused connection, or an unexpected response. */
export class TransportError extends CliError {
  /** `request_timeout`, `connection_refused` or `request_failed`. */
  readonly code: TransportErrorCode;

  constructor(code: TransportErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TransportError";
    this.code = code;
  }

  render(): string {
    return `${this.code}: ${this.message}`;
  }
}

/** Bad invocation or local configuration (missing flag, unknown cluster, no endpoint, …). */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }

  render(): string {
    return `error: ${this.message}`;
  }
}

/** `--wait` gave up before the task reached a terminal state (the task keeps running). */
export class WaitTimeoutError extends CliError {
  constructor(message: string) {
    super(message);
    this.name = "WaitTimeoutError";
  }

  render(): string {
    return `error: ${this.message}`;
  }
}

/**
 * Prints an error the way every command ends on one and returns the exit status 1: a
 * {@link CliError} as its line, anything else (a bug) as `error: <message>`, with the stack
 * when `$OTHERIX_DEBUG` is set.
 */
export function reportError(
  e: unknown,
  io: { err(text: string): void; env(name: string): string | undefined },
): number {
  if (e instanceof CliError) {
    io.err(e.render() + "\n");
    return 1;
  }
  const err = e as Error;
  io.err(`error: ${err?.message ?? String(e)}\n`);
  if (io.env("OTHERIX_DEBUG")) io.err(`${err?.stack ?? ""}\n`);
  return 1;
}
