// The browser console page's script (served by cp/console/page.ts; no inline script, so the
// page's Content-Security-Policy can forbid it). Flow: log in (POST /v1/auth/login; the access
// token stays in this closure, never in storage) → POST /v1/vms/<name>/console for a
// single-use ticket → WebSocket to the ticket's path on this page's origin → xterm.js.
// Guest output arrives as binary frames; keystrokes leave as binary frames (UTF-8).
"use strict";
(() => {
  const vmName = document.body.dataset.vm || "";
  const byId = (id) => document.getElementById(id);
  const loginForm = byId("login");
  const statusEl = byId("status");
  const termEl = byId("terminal");
  const reconnect = byId("reconnect");
  const encoder = new TextEncoder();
  /** @type {string | null} */
  let accessToken = null;
  /** @type {any} */
  let term = null;
  /** @type {any} */
  let fit = null;
  /** @type {WebSocket | null} */
  let socket = null;

  /** Shows `text` in the status line; `kind` is "info", "ok" or "error". */
  function setStatus(text, kind = "info") {
    statusEl.textContent = text;
    statusEl.dataset.kind = kind;
  }

  /** A readable line for an error envelope (or a bare HTTP status). */
  function describe(body, status) {
    const err = body && body.error;
    if (!err) return `Request failed (HTTP ${status}).`;
    if (err.code === "permission_denied") return `Permission denied: ${err.message}`;
    if (err.code === "unauthenticated") return `Not signed in: ${err.message}`;
    return `${err.code}: ${err.message}`;
  }

  async function call(method, path, body, token) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    let json = null;
    try {
      json = await res.json();
    } catch {
      // not JSON: described by status
    }
    return { ok: res.ok, status: res.status, body: json };
  }

  function ensureTerminal() {
    if (term) return;
    term = new globalThis.Terminal({
      cursorBlink: true,
      convertEol: false,
      scrollback: 5000,
      fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
    });
    fit = new globalThis.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(termEl);
    fit.fit();
    globalThis.addEventListener("resize", () => fit.fit());
    term.onData((data) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    term.onBinary((data) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) return;
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      socket.send(bytes);
    });
  }

  function closedText(code, opened) {
    if (!opened) {
      return "Could not attach to the console: the VM may not be running, or its node is " +
        "unreachable.";
    }
    if (code === 1000) return "Console closed: the VM stopped.";
    if (code === 1001) return "Console closed: the control plane is restarting.";
    if (code === 1008) return "Console closed: this page could not keep up with the output.";
    if (code === 1011) return "Console closed: the connection to the VM's node was lost.";
    return `Console closed (code ${code}).`;
  }

  async function attach() {
    reconnect.hidden = true;
    setStatus(`Requesting a console ticket for ${vmName}…`);
    const ticket = await call(
      "POST",
      `/v1/vms/${encodeURIComponent(vmName)}/console`,
      undefined,
      accessToken,
    );
    if (!ticket.ok) {
      setStatus(describe(ticket.body, ticket.status), "error");
      if (ticket.status === 401) showLogin();
      else reconnect.hidden = false;
      return;
    }
    const url = new URL(ticket.body.websocket_path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    ensureTerminal();
    let opened = false;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onopen = () => {
      opened = true;
      document.body.dataset.state = "attached";
      setStatus(`Connected to ${vmName}. Press Enter for a prompt.`, "ok");
      term.focus();
    };
    ws.onmessage = (e) => {
      term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    };
    ws.onclose = (e) => {
      if (socket === ws) socket = null;
      document.body.dataset.state = "closed";
      setStatus(closedText(e.code, opened), "error");
      reconnect.hidden = false;
    };
  }

  function showLogin() {
    accessToken = null;
    document.body.dataset.state = "login";
    loginForm.hidden = false;
    byId("email").focus();
  }

  loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const email = byId("email").value.trim();
    const password = byId("password").value;
    setStatus("Signing in…");
    try {
      const res = await call("POST", "/v1/auth/login", { email, password });
      if (!res.ok) {
        setStatus(describe(res.body, res.status), "error");
        return;
      }
      accessToken = res.body.access_token;
      byId("password").value = "";
      loginForm.hidden = true;
      await attach();
    } catch (e) {
      setStatus(`Cannot reach the control plane: ${e.message}`, "error");
    }
  });

  reconnect.addEventListener("click", () => {
    attach().catch((e) => setStatus(`Cannot reach the control plane: ${e.message}`, "error"));
  });

  showLogin();
  setStatus(`Sign in to open the serial console of ${vmName}.`);
})();
