/**
 * The agent's version, reported in heartbeats (`agent_version`): the release
 * (shared/version.ts).
 *
 * @module
 */
import { OTHERIX_VERSION } from "../shared/version.ts";

/** `otherix-agent` version string. */
export const AGENT_VERSION = OTHERIX_VERSION;
