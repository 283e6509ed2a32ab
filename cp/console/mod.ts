/**
 * The serial console on the control plane (shared/api/console.ts): the ticket and WebSocket
 * routes ({@link consoleRoutes}, mounted at `/v1/vms` before the VM routes) and the browser
 * page ({@link consolePageRoutes}, mounted at `/`).
 *
 * @module
 */
export { consoleRoutes, type ConsoleRoutesOptions } from "./routes.ts";
export { consolePageRoutes } from "./page.ts";
