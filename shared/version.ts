/**
 * The Otherix release all three binaries are built from (agents report it in heartbeats as
 * `agent_version`; the OpenAPI document carries it as `info.version`).
 *
 * @module
 */

/** The release version. */
export const OTHERIX_VERSION = "0.1.0-dev";
