/**
 * Shared contracts of the three binaries. Import the specific module where possible.
 *
 * @module
 */
export * from "./errors.ts";
export * from "./constants.ts";
export * from "./rbac.ts";
export * from "./api/common.ts";
export * from "./api/tasks.ts";
export * from "./api/auth.ts";
export * from "./api/nodes.ts";
export * from "./api/pools.ts";
export * from "./api/vms.ts";
export * from "./api/agent.ts";
export * from "./api/vm_runtime.ts";
export * from "./api/images.ts";
export * from "./api/events.ts";
export * from "./api/console.ts";
