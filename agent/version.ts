/**
 * The agent's version, reported in heartbeats (`agent_version`).
 *
 * @module
 */

/** `otherix-agent` version string. */
export const AGENT_VERSION = "0.1.0-dev";
