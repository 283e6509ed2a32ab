/**
 * The resource event stream (`GET /v1/events`).
 *
 * @module
 */
export { eventRoutes, type EventRoutesOptions } from "./routes.ts";
export { type EventSource, type Viewer } from "./source.ts";
export {
  DEFAULT_MAX_QUEUED_EVENTS,
  DEFAULT_PAGE_SIZE,
  DEFAULT_PING_INTERVAL_MS,
} from "./stream.ts";
