/**
 * The browser console page, served by the control plane's public port (mounted at `/`):
 *
 * - `GET /console/{name}` → an HTML page for VM `name`: a login form (email + password →
 *   `POST /v1/auth/login`; the access token is kept in page memory only), then a console
 *   ticket (`POST /v1/vms/{name}/console`) and the WebSocket on the page's own origin, shown
 *   with xterm.js. Refusals (e.g. a viewer's `permission_denied`) and closes are shown as a
 *   status line.
 * - `GET /console/assets/{file}` → xterm.js, its CSS, the fit addon and the page's own script
 *   and style, bundled into the binary (text imports; no CDN), with one-year immutable cache
 *   headers (the page links them with `?v=<content hash>`).
 *
 * The page's Content-Security-Policy allows scripts only from this origin (no inline script;
 * the page's script is an asset) and connections only to this origin (`ws:`/`wss:` included).
 * Styles allow `'unsafe-inline'` because xterm.js's DOM renderer creates `<style>` elements
 * for its theme and cell sizes.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { Hono } from "hono";
import xtermJs from "@xterm/xterm/lib/xterm.js" with { type: "text" };
import xtermCss from "@xterm/xterm/css/xterm.css" with { type: "text" };
import fitJs from "@xterm/addon-fit/lib/addon-fit.js" with { type: "text" };
import pageJs from "./assets/console.js" with { type: "text" };
import pageCss from "./assets/console.css" with { type: "text" };
import type { AppEnv } from "../auth/middleware.ts";
import type { CpContext } from "../context.ts";

/** A bundled static file. */
interface Asset {
  body: string;
  contentType: string;
  /** First 16 hex digits of the content's SHA-256 (cache-busting `?v=`). */
  version: string;
}

/** Drops `//# sourceMappingURL=` comments: the maps are not bundled. */
function withoutSourceMap(js: string): string {
  return js.replace(/^\/\/# sourceMappingURL=.*$/gm, "");
}

function asset(body: string, contentType: string): Asset {
  const version = createHash("sha256").update(body).digest("hex").slice(0, 16);
  return { body, contentType, version };
}

const JS = "text/javascript; charset=utf-8";
const CSS = "text/css; charset=utf-8";

/** The bundled assets by file name. */
export const CONSOLE_ASSETS: ReadonlyMap<string, Asset> = new Map([
  ["xterm.js", asset(withoutSourceMap(xtermJs), JS)],
  ["xterm.css", asset(xtermCss, CSS)],
  ["addon-fit.js", asset(withoutSourceMap(fitJs), JS)],
  ["console.js", asset(pageJs, JS)],
  ["console.css", asset(pageCss, CSS)],
]);

/** The page's Content-Security-Policy. */
export const CONSOLE_PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "font-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Escapes text for HTML content and double-quoted attributes. */
function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function assetUrl(file: string): string {
  return `/console/assets/${file}?v=${CONSOLE_ASSETS.get(file)!.version}`;
}

/** The page for VM `name`. */
export function consolePageHtml(name: string): string {
  const n = escapeHtml(name);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${n} — Otherix console</title>
<link rel="stylesheet" href="${assetUrl("xterm.css")}">
<link rel="stylesheet" href="${assetUrl("console.css")}">
</head>
<body data-vm="${n}" data-state="login">
<header><h1>${n}</h1><span id="status" role="status" aria-live="polite"></span>
<button id="reconnect" type="button" hidden>Reconnect</button></header>
<form id="login" hidden>
<label>Email <input id="email" name="email" type="email" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password"
 autocomplete="current-password" required></label>
<button type="submit">Sign in and attach</button>
</form>
<div id="terminal"></div>
<script src="${assetUrl("xterm.js")}"></script>
<script src="${assetUrl("addon-fit.js")}"></script>
<script src="${assetUrl("console.js")}"></script>
</body>
</html>
`;
}

/** The page and its assets (see the module doc); mount at `/`. */
export function consolePageRoutes(_ctx: CpContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.get("/console/assets/:file", (c) => {
    const a = CONSOLE_ASSETS.get(c.req.param("file"));
    if (!a) {
      return c.json({ error: { code: "not_found", message: "no such console asset" } }, 404);
    }
    return c.body(a.body, 200, {
      "content-type": a.contentType,
      "cache-control": "public, max-age=31536000, immutable",
      "x-content-type-options": "nosniff",
      etag: `"${a.version}"`,
    });
  });
  app.get("/console/:name", (c) =>
    c.html(consolePageHtml(c.req.param("name")), 200, {
      "cache-control": "no-store",
      "content-security-policy": CONSOLE_PAGE_CSP,
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "referrer-policy": "no-referrer",
    }));
  return app;
}
