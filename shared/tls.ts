/**
 * TLS plumbing shared by the control plane and the agent.
 *
 * Servers: `Deno.serve` cannot request client certificates, so TLS servers that need them use
 * `node:https` `createServer({requestCert, ca})` and hand requests to a Hono app through
 * `@hono/node-server`'s request listener (DESIGN.md "Facts"). The verified peer certificate is
 * exposed to handlers through {@link peerOf}.
 *
 * Clients: Deno's `fetch` presents a client certificate via `Deno.createHttpClient`.
 *
 * @module
 */
import { createServer, type Server } from "node:https";
import type { IncomingMessage } from "node:http";
import type { TLSSocket } from "node:tls";
import { getRequestListener } from "@hono/node-server";

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
}

/** A running TLS server. */
export interface TlsServer {
  /** The bound port (useful when `port` was 0). */
  port: number;
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
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
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
