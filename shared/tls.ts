/**
 * TLS plumbing shared by the control plane and the agent.
 *
 * Servers: `Deno.serve` cannot request client certificates, so TLS servers that need them use
 * `node:https` `createServer({requestCert, ca})` and hand requests to a Hono app through
 * `@hono/node-server`'s request listener (DESIGN.md "Facts"). The verified peer certificate is
 * exposed to handlers through {@link peerOf}. WebSocket upgrades (`Upgrade: websocket`) bypass
 * the app and go to the server's optional `onUpgrade` handler (with npm `ws`:
 * `WebSocketServer({noServer: true}).handleUpgrade`); {@link refuseUpgrade} answers one with an
 * error envelope instead.
 *
 * Clients: Deno's `fetch` presents a client certificate via `Deno.createHttpClient`, but it
 * cannot say WHICH CA-signed identity answered. Between cluster members use
 * {@link requestTls}, which also checks the server certificate's subject (the control plane
 * calls node `X` only if the certificate says CN=`X`, O=`otherix:nodes`; agents talk only to
 * O=`otherix:control-plane`), so one joined node cannot pose as another or as the control
 * plane.
 *
 * @module
 */
import {
  Agent as HttpsAgent,
  createServer,
  request as httpsRequest,
  type Server,
} from "node:https";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { type IncomingMessage, STATUS_CODES } from "node:http";
import type { TLSSocket } from "node:tls";
import type { Duplex } from "node:stream";
import type { Buffer } from "node:buffer";
import { getRequestListener } from "@hono/node-server";
import type { ApiError } from "./errors.ts";

/** What a handler learns about the TLS peer. */
export interface Peer {
  /** True when the client presented a certificate that chains to the configured CA. */
  authorized: boolean;
  /** Subject CN of the verified client certificate (null when none or not authorized). */
  commonName: string | null;
  /** Subject O of the verified client certificate. */
  organization: string | null;
}

/** Hono `Env` of apps served by {@link serveTls}: `c.env.incoming` is the node request. */
export type TlsEnv = { Bindings: { incoming: IncomingMessage } };

/** Reads the TLS peer of a request served by {@link serveTls}. */
export function peerOf(incoming: IncomingMessage | undefined): Peer {
  const socket = incoming?.socket as TLSSocket | undefined;
  if (!socket || typeof socket.getPeerCertificate !== "function" || !socket.authorized) {
    return { authorized: false, commonName: null, organization: null };
  }
  const cert = socket.getPeerCertificate();
  const subject = (cert?.subject ?? {}) as unknown as Record<string, string | string[]>;
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v) ?? null;
  return { authorized: true, commonName: first(subject.CN), organization: first(subject.O) };
}

/** Options of {@link serveTls}. */
export interface TlsServeOptions {
  hostname: string;
  port: number;
  certPem: string;
  keyPem: string;
  /** CA bundle used to verify client certificates. */
  caPem: string;
  /**
   * `true`: the handshake fails without a valid client certificate (agent server).
   * `false`: a certificate is requested and verified, but optional; handlers decide with
   * {@link peerOf} (control plane's agent-facing port, where `/v1/ca` is public).
   */
  requireClientCert: boolean;
  /** The Hono app's `fetch`. */
  fetch: (req: Request, env: { incoming: IncomingMessage }) => Response | Promise<Response>;
  /**
   * Receives every request carrying `Upgrade: websocket` instead of the app: the raw request
   * (the TLS peer is `req.socket`, see {@link peerOf}), its socket and the first bytes after
   * the headers. The handler owns the socket: it upgrades it or answers with
   * {@link refuseUpgrade}. Without it such requests reach the app like any other (which
   * answers them with a plain response). Other `Upgrade` protocols are refused with 400
   * `validation_failed` while a handler is set. Sockets still open when the server closes are
   * destroyed.
   */
  onUpgrade?: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
  /**
   * How long an idle keep-alive connection stays open, ms (default 5 000, node's). The
   * control plane's agent port keeps connections across heartbeats (a little over two
   * intervals), so a steady agent pays one TLS handshake per connection, not per heartbeat.
   */
  keepAliveTimeoutMs?: number;
}

/** A running TLS server. */
export interface TlsServer {
  /** The bound port (useful when `port` was 0). */
  port: number;
  /**
   * Serves new connections with another certificate (e.g. after a renewal); connections
   * already open keep theirs. Client certificates are still requested and verified.
   */
  setIdentity(certPem: string, keyPem: string, caPem: string): void;
  close(): Promise<void>;
}

/**
 * Starts an HTTPS server that verifies client certificates against `caPem`.
 *
 * @throws when the address cannot be bound
 */
export async function serveTls(opts: TlsServeOptions): Promise<TlsServer> {
  const listener = getRequestListener(
    (req, env) => opts.fetch(req, env as { incoming: IncomingMessage }),
    // Keep Deno's global Request/Response: replacing them breaks `Deno.serve` in the same
    // process ("Response constructed via the Response constructor in this realm").
    { overrideGlobalObjects: false },
  );
  const server: Server = createServer({
    cert: opts.certPem,
    key: opts.keyPem,
    ca: opts.caPem,
    requestCert: true,
    rejectUnauthorized: opts.requireClientCert,
    minVersion: "TLSv1.2",
  }, listener);
  if (opts.keepAliveTimeoutMs !== undefined) {
    server.keepAliveTimeout = opts.keepAliveTimeoutMs;
    // Must exceed keepAliveTimeout, or an idle connection's next request can be cut off.
    server.headersTimeout = opts.keepAliveTimeoutMs + 5_000;
  }
  const upgraded = new Set<Duplex>();
  const onUpgrade = opts.onUpgrade;
  if (onUpgrade) {
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      upgraded.add(socket);
      socket.once("close", () => upgraded.delete(socket));
      if (!/^websocket$/i.test(String(req.headers.upgrade ?? ""))) {
        refuseUpgradeWith(socket, 400, {
          code: "validation_failed",
          message: `unsupported upgrade ${JSON.stringify(req.headers.upgrade ?? "")}`,
        });
        return;
      }
      try {
        onUpgrade(req, socket, head);
      } catch {
        socket.destroy();
      }
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.hostname, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : opts.port;
  return {
    port,
    setIdentity: (certPem, keyPem, caPem) =>
      server.setSecureContext({ cert: certPem, key: keyPem, ca: caPem }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
        for (const socket of upgraded) socket.destroy();
      }),
  };
}

/**
 * Answers an upgrade request with `err`'s error envelope (its catalogue status) and closes
 * the socket: how an `onUpgrade` handler refuses before the WebSocket handshake.
 */
export function refuseUpgrade(socket: Duplex, err: ApiError): void {
  refuseUpgradeWith(socket, err.status, err.toInfo());
}

function refuseUpgradeWith(
  socket: Duplex,
  status: number,
  info: { code: string; message: string; details?: Record<string, unknown> },
): void {
  if (socket.destroyed) return;
  const body = new TextEncoder().encode(JSON.stringify({ error: info }));
  const head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${body.length}\r\n` +
    "Connection: close\r\n\r\n";
  socket.end(concatBytes(new TextEncoder().encode(head), body));
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Material of an mTLS client. */
export interface ClientTlsMaterial {
  caPem: string;
  certPem?: string;
  keyPem?: string;
}

/**
 * A `Deno.HttpClient` that trusts only `caPem` and, when given, presents `certPem`/`keyPem`.
 * Pass it as `fetch(url, {client})`; close it when done.
 */
export function createTlsClient(m: ClientTlsMaterial): Deno.HttpClient {
  return Deno.createHttpClient({
    caCerts: [m.caPem],
    ...(m.certPem && m.keyPem ? { cert: m.certPem, key: m.keyPem } : {}),
  });
}

/** Who a TLS server must be: checked against its verified certificate's subject. */
export interface ExpectedPeer {
  /** Required subject CN (e.g. the node name); omitted: any. */
  commonName?: string;
  /** Required subject O (`AGENT_CERT_ORG` or `CP_CERT_ORG`). */
  organization: string;
}

/** Options of {@link requestTls}. */
export interface TlsRequestInit {
  method?: string;
  headers?: Record<string, string>;
  /** Request body (JSON text). */
  body?: string;
  signal?: AbortSignal;
  /** Trust anchor and optional client certificate. */
  tls: ClientTlsMaterial;
  /** The identity the server certificate must carry. */
  expect: ExpectedPeer;
  /** Largest response body accepted, bytes (default 8 MiB). */
  maxBodyBytes?: number;
  /**
   * A keep-alive `https.Agent` dedicated to this (URL, `tls`, `expect`) triple (see
   * {@link keepAliveAgent}): connections are reused, each was checked against `expect` when
   * it was opened. Omitted: a new connection per request.
   */
  agent?: HttpsAgent;
}

/**
 * A keep-alive agent for {@link requestTls}: at most `maxSockets` connections, reused while
 * idle. Use one per peer identity and client certificate (a renewed certificate gets a new
 * agent); `destroy()` it when done.
 */
export function keepAliveAgent(maxSockets = 2): HttpsAgent {
  return new HttpsAgent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
}

/** Why the server's certificate is not `expect` (null: it is). */
export function peerMismatch(cert: PeerCertificate, expect: ExpectedPeer): string | null {
  const subject = (cert?.subject ?? {}) as unknown as Record<string, string | string[]>;
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v) ?? null;
  const cn = first(subject.CN);
  const org = first(subject.O);
  if (org !== expect.organization) {
    return `server certificate O=${org ?? "(none)"} is not ${expect.organization}`;
  }
  if (expect.commonName !== undefined && cn !== expect.commonName) {
    return `server certificate CN=${cn ?? "(none)"} is not ${expect.commonName}`;
  }
  return null;
}

/**
 * An HTTPS request that verifies the server against `init.tls.caPem` (chain + host name, as
 * `fetch` does) AND checks its certificate subject against `init.expect`. Connections are not
 * pooled unless `init.agent` is a dedicated keep-alive agent (every connection is checked when
 * it opens). Resolves to a buffered `Response`.
 *
 * @throws Error on transport or TLS failure, identity mismatch, or a body over `maxBodyBytes`;
 *   the signal's reason when aborted
 */
export function requestTls(url: URL | string, init: TlsRequestInit): Promise<Response> {
  const max = init.maxBodyBytes ?? 8 * 1024 * 1024;
  return new Promise<Response>((resolvePromise, rejectPromise) => {
    let settled = false;
    const resolve = (r: Response) => {
      if (settled) return;
      settled = true;
      resolvePromise(r);
    };
    const reject = (e: unknown) => {
      if (settled) return;
      settled = true;
      rejectPromise(e);
    };
    if (init.signal?.aborted) return reject(init.signal.reason);
    const req = httpsRequest(url, {
      method: init.method ?? "GET",
      headers: init.headers,
      // Pooled only through a dedicated agent (checked when each connection was opened).
      agent: init.agent ?? false,
      ca: init.tls.caPem,
      cert: init.tls.certPem,
      key: init.tls.keyPem,
      checkServerIdentity: (host: string, cert: PeerCertificate) => {
        const hostError = checkServerIdentity(host, cert);
        if (hostError) return hostError;
        const why = peerMismatch(cert, init.expect);
        return why === null ? undefined : new Error(why);
      },
    }, (res) => {
      const chunks: Uint8Array[] = [];
      let size = 0;
      res.on("data", (c: Uint8Array) => {
        size += c.length;
        if (size > max) {
          reject(new Error(`response body exceeds ${max} bytes`));
          req.destroy();
          return;
        }
        chunks.push(c);
      });
      res.on("error", reject);
      res.on("end", () => {
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : String(v));
        }
        const body = new Uint8Array(size);
        let off = 0;
        for (const c of chunks) {
          body.set(c, off);
          off += c.length;
        }
        const status = res.statusCode ?? 502;
        const nullBody = status === 204 || status === 304;
        resolve(new Response(nullBody ? null : body, { status, headers }));
      });
    });
    const onAbort = () => {
      reject(init.signal!.reason);
      req.destroy();
    };
    init.signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", (e: Error) => reject(init.signal?.aborted ? init.signal.reason : e));
    req.on("close", () => init.signal?.removeEventListener("abort", onAbort));
    req.end(init.body);
  });
}
