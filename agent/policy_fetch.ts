/**
 * A `fetch` for image downloads that applies `images.url_policy` (shared/url_policy.ts) to
 * the address it actually connects to.
 *
 * Every connection of such a fetch goes through a small SOCKS5 relay inside the agent
 * ({@link PolicyRelay}, on 127.0.0.1, RFC 1928 with RFC 1929 user/password: a fresh secret per
 * fetch, so nothing else can use it). `fetch` hands it the URL's host name (`socks5h`), and the
 * relay resolves it (getaddrinfo, so `/etc/hosts` counts), judges every address with the
 * policy and connects to the first allowed one only — once per connection. TLS stays
 * end-to-end between `fetch` and the image server, so certificates are still verified against
 * the URL's host name, and `http:` and `https:` take the same path. A name that resolves to an
 * allowed address first and to a loopback one later (DNS rebinding) therefore cannot make the
 * node connect to the loopback one.
 *
 * Redirects are followed here (at most {@link MAX_REDIRECTS}), each a new connection judged
 * again; credentials go to the URL's own origin only.
 *
 * Failures before a response arrives (DNS, refused, reset, TLS) all reject with one message,
 * {@link CONNECT_FAILED}, so a task error does not tell whether a port is open; the cause is
 * kept as the error's `cause` for the agent's own log. A policy refusal rejects with
 * {@link UrlPolicyError}, naming the refused address classes (no connection is made).
 *
 * @module
 */
import { lookup as dnsLookup } from "node:dns/promises";
import { timingSafeEqual } from "node:crypto";
import { addressProblem, type UrlPolicy } from "../shared/url_policy.ts";
import { redactText, splitCredentials } from "../shared/url_redact.ts";

/** Redirect hops followed at most. */
export const MAX_REDIRECTS = 10;

/** The one message of a connection-level failure. */
export const CONNECT_FAILED = "cannot connect to the image server, or the connection failed";

/** A fetch refused by the policy (no connection was made). */
export class UrlPolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UrlPolicyError";
  }
}

/** Options of {@link policyFetch}. */
export interface PolicyFetchOptions {
  policy: UrlPolicy;
  /** Resolves a host name to its addresses (default: getaddrinfo through `node:dns`). */
  lookup?: (host: string) => Promise<string[]>;
  /** Extra CA certificates (PEM) trusted for https image servers (tests). */
  caCerts?: string[];
  /** The relay to use (default: one per process, started on first use). */
  relay?: PolicyRelay;
}

async function systemLookup(host: string): Promise<string[]> {
  const found = await dnsLookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

let sharedRelay: PolicyRelay | null = null;

/**
 * A `fetch` (GET/HEAD, as the image cache uses it) that connects only where `o.policy` allows
 * (see the module doc).
 *
 * @throws UrlPolicyError when no address of a hop is allowed; Error {@link CONNECT_FAILED}
 *   (with `cause`) on a connection-level failure or too many redirects; the signal's reason
 *   when `init.signal` aborts
 */
export function policyFetch(o: PolicyFetchOptions): typeof fetch {
  const lookup = o.lookup ?? systemLookup;
  return async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const relay = o.relay ?? (sharedRelay ??= new PolicyRelay());
    const first = splitCredentials(String(input instanceof Request ? input.url : input));
    let url = new URL(first.url);
    const origin = url.origin;
    const authorization = first.authorization ?? new Headers(init.headers).get("authorization");
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const headers = new Headers(init.headers);
      // Credentials go to the URL's own origin only, never to where it redirects.
      if (authorization && url.origin === origin) headers.set("authorization", authorization);
      else headers.delete("authorization");
      const session = relay.open(o.policy, lookup);
      const client = Deno.createHttpClient({
        proxy: {
          transport: "socks5",
          url: `socks5h://127.0.0.1:${await relay.port()}`,
          basicAuth: { username: session.id, password: session.secret },
        },
        ...(o.caCerts ? { caCerts: o.caCerts } : {}),
      });
      let res: Response;
      try {
        res = await fetch(url, { ...init, headers, client, redirect: "manual" });
      } catch (e) {
        client.close();
        relay.close(session);
        if (init.signal?.aborted) throw init.signal.reason ?? e;
        if (session.refused) throw new UrlPolicyError(session.refused);
        throw new Error(CONNECT_FAILED, { cause: session.failure ?? e });
      }
      const location = res.headers.get("location");
      if (REDIRECTS.has(res.status) && location) {
        await res.body?.cancel().catch(() => {});
        client.close();
        relay.close(session);
        try {
          url = new URL(location, url);
        } catch {
          throw new Error(`the image server redirected to an invalid URL`);
        }
        if (url.protocol !== "http:" && url.protocol !== "https:") {
          throw new UrlPolicyError(`the image server redirected to a ${url.protocol} URL`);
        }
        continue;
      }
      return closingOnEnd(res, () => {
        client.close();
        relay.close(session);
      });
    }
    throw new Error(`${CONNECT_FAILED}: more than ${MAX_REDIRECTS} redirects`);
  };
}

/** One fetch's credentials at the relay and what the relay decided for it. */
export interface RelaySession {
  id: string;
  secret: string;
  policy: UrlPolicy;
  lookup: (host: string) => Promise<string[]>;
  /** Set when the policy refused a connection: why. */
  refused?: string;
  /** Set when a connection failed after the policy allowed it: the cause. */
  failure?: unknown;
}

/**
 * The SOCKS5 relay behind {@link policyFetch} (see the module doc): listens on 127.0.0.1 (an
 * ephemeral port, started on first use; it does not keep the process alive), accepts only
 * CONNECT from a client that authenticates as an open session, and connects only to addresses
 * that session's policy allows.
 */
export class PolicyRelay {
  #listener: Deno.TcpListener | null = null;
  #sessions = new Map<string, RelaySession>();

  /** The relay's port (starts it on first call). */
  port(): Promise<number> {
    if (!this.#listener) {
      this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      this.#listener.unref();
      this.#serve(this.#listener);
    }
    return Promise.resolve(this.#listener.addr.port);
  }

  /** Opens a session for one fetch hop. */
  open(policy: UrlPolicy, lookup: (host: string) => Promise<string[]>): RelaySession {
    const s: RelaySession = {
      id: crypto.randomUUID(),
      secret: crypto.randomUUID(),
      policy,
      lookup,
    };
    this.#sessions.set(s.id, s);
    return s;
  }

  /** Forgets a session: its credentials no longer open connections. */
  close(s: RelaySession): void {
    this.#sessions.delete(s.id);
  }

  /** Stops listening (tests). */
  stop(): void {
    this.#listener?.close();
    this.#listener = null;
  }

  async #serve(listener: Deno.TcpListener): Promise<void> {
    try {
      for await (const conn of listener) {
        this.#handle(conn).catch(() => {
          try {
            conn.close();
          } catch { /* already closed */ }
        });
      }
    } catch { /* listener closed */ }
  }

  async #handle(conn: Deno.Conn): Promise<void> {
    const io = new ConnReader(conn);
    // Greeting: VER 5, NMETHODS, METHODS; only user/password (2) is accepted.
    const [ver, n] = await io.read(2);
    const methods = await io.read(n);
    if (ver !== 5 || !methods.includes(2)) {
      await conn.write(new Uint8Array([5, 0xff]));
      return conn.close();
    }
    await conn.write(new Uint8Array([5, 2]));
    const [, ulen] = await io.read(2);
    const user = new TextDecoder().decode(await io.read(ulen));
    const [plen] = await io.read(1);
    const pass = await io.read(plen);
    const session = this.#sessions.get(user);
    const want = session ? new TextEncoder().encode(session.secret) : null;
    if (!session || !want || want.length !== pass.length || !timingSafeEqual(want, pass)) {
      await conn.write(new Uint8Array([1, 1]));
      return conn.close();
    }
    await conn.write(new Uint8Array([1, 0]));
    // Request: VER, CMD (1 = CONNECT), RSV, ATYP, DST.ADDR, DST.PORT.
    const [, cmd, , atyp] = await io.read(4);
    let host: string;
    if (atyp === 3) host = new TextDecoder().decode(await io.read((await io.read(1))[0]));
    else if (atyp === 1) host = [...await io.read(4)].join(".");
    else if (atyp === 4) {
      const b = await io.read(16);
      host = Array.from({ length: 8 }, (_, i) => ((b[2 * i] << 8) | b[2 * i + 1]).toString(16))
        .join(":");
    } else return await reply(conn, 8);
    const [hi, lo] = await io.read(2);
    const port = (hi << 8) | lo;
    if (cmd !== 1) return await reply(conn, 7);
    let addresses: string[];
    try {
      addresses = /^[\d.]+$|:/.test(host) ? [host] : await session.lookup(host);
    } catch (e) {
      session.failure = e;
      return await reply(conn, 4);
    }
    const problems: string[] = [];
    let chosen: string | null = null;
    for (const a of addresses) {
      let problem: string | null;
      try {
        problem = addressProblem(a, session.policy);
      } catch {
        problem = `address ${a} is not an IP address`;
      }
      if (!problem) {
        chosen = a;
        break;
      }
      problems.push(problem);
    }
    if (!chosen) {
      const named = /^[\d.]+$|:/.test(host) ? "" : `host ${host} resolves to refused addresses: `;
      session.refused = redactText(named + (problems.join("; ") || "no address"));
      return await reply(conn, 2);
    }
    let target: Deno.TcpConn;
    try {
      target = await Deno.connect({ hostname: chosen, port });
    } catch (e) {
      session.failure = e;
      return await reply(conn, 5);
    }
    await conn.write(new Uint8Array([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
    const rest = io.rest();
    if (rest.length) await target.write(rest);
    await Promise.allSettled([copy(conn, target), copy(target, conn)]);
    for (const c of [conn, target]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  }
}

/** Copies `from` to `to` until EOF, then half-closes `to` (256 KiB reads). */
async function copy(from: Deno.Conn, to: Deno.TcpConn | Deno.Conn): Promise<void> {
  const buf = new Uint8Array(256 * 1024);
  try {
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
    await to.closeWrite();
  } catch {
    try {
      to.close();
    } catch { /* already closed */ }
  }
}

/** Sends SOCKS5 reply `code` (no bound address) and closes. */
async function reply(conn: Deno.Conn, code: number): Promise<void> {
  await conn.write(new Uint8Array([5, code, 0, 1, 0, 0, 0, 0, 0, 0])).catch(() => {});
  conn.close();
}

/** Exact-length reads from a connection (the SOCKS handshake). */
class ConnReader {
  #buf = new Uint8Array(0);
  constructor(private conn: Deno.Conn) {}

  async read(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(Math.max(512, n));
      const got = await this.conn.read(chunk);
      if (got === null) throw new Error("relay: client closed the connection");
      const next = new Uint8Array(this.#buf.length + got);
      next.set(this.#buf);
      next.set(chunk.subarray(0, got), this.#buf.length);
      this.#buf = next;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }

  /** Bytes read past the handshake (forwarded to the target). */
  rest(): Uint8Array {
    const out = this.#buf;
    this.#buf = new Uint8Array(0);
    return out;
  }
}

/** `res` with a body that calls `done` once read to the end, cancelled or failed. */
function closingOnEnd(res: Response, done: () => void): Response {
  let finished = false;
  const finish = () => {
    if (!finished) done();
    finished = true;
  };
  if (!res.body || [101, 204, 205, 304].includes(res.status)) {
    res.body?.cancel().catch(() => {});
    finish();
    return new Response(null, { status: res.status, headers: res.headers });
  }
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          finish();
          ctl.close();
        } else ctl.enqueue(value);
      } catch (e) {
        finish();
        ctl.error(e);
      }
    },
    async cancel(reason) {
      await reader.cancel(reason).catch(() => {});
      finish();
    },
  });
  return new Response(body, {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  });
}
