/**
 * A TCP proxy on 127.0.0.1:0 in front of a real server, for tests that must see what a
 * client sent and received and break its connections (a dropped event stream): it records
 * the bytes of each connection both ways, can cut connections, and can hold new ones until
 * released.
 *
 * @module
 */

/** One proxied connection. */
export interface ProxiedConnection {
  /** What the client sent (requests), decoded as UTF-8. */
  sent: string;
  /** What the server answered, decoded as UTF-8. */
  received: string;
  /** Closes both sides. */
  cut(): void;
  closed: boolean;
}

/** A running proxy. */
export class TcpProxy {
  readonly connections: ProxiedConnection[] = [];
  readonly #listener: Deno.TcpListener;
  readonly #upstreamPort: number;
  #held: Promise<void> | null = null;
  #release: (() => void) | null = null;
  #accepting: Promise<void>;
  #changed = new Set<() => void>();

  constructor(upstreamPort: number) {
    this.#upstreamPort = upstreamPort;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#accepting = this.#accept();
  }

  /** Base URL of the proxy. */
  get url(): string {
    return `http://127.0.0.1:${this.#listener.addr.port}`;
  }

  /** Request lines (`GET /v1/events?… HTTP/1.1`) of every request seen, in order. */
  requestLines(): string[] {
    return this.connections.flatMap((c) =>
      // (a request may follow the previous one's body on the same line)
      [...c.sent.matchAll(/(?:GET|POST|PUT|DELETE|PATCH) \S+ HTTP\/1\.1(?=\r\n)/g)].map((m) => m[0])
    );
  }

  /** New connections wait (not accepted upstream) until {@link release}. */
  hold(): void {
    this.#held ??= new Promise((r) => (this.#release = r));
  }

  /** Lets held and new connections through. */
  release(): void {
    this.#release?.();
    this.#held = null;
    this.#release = null;
  }

  /** Waits until `pred` holds, re-checking whenever bytes flow (throws after `ms`). */
  async until<T>(what: string, pred: () => T | null | undefined | false, ms = 15_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = pred();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.#changed.delete(done);
          resolve();
        };
        const timer = setTimeout(done, deadline - Date.now());
        this.#changed.add(done);
      });
    }
  }

  async #accept(): Promise<void> {
    for await (const client of this.#listener) {
      void this.#serve(client);
    }
  }

  async #serve(client: Deno.TcpConn): Promise<void> {
    const conn: ProxiedConnection = {
      sent: "",
      received: "",
      closed: false,
      cut: () => {
        if (conn.closed) return;
        conn.closed = true;
        for (const c of [client, upstream]) {
          try {
            c?.close();
          } catch {
            // already closed
          }
        }
        this.#notify();
      },
    };
    let upstream: Deno.TcpConn | null = null;
    this.connections.push(conn);
    if (this.#held) await this.#held;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#upstreamPort });
    } catch {
      conn.cut();
      return;
    }
    if (conn.closed) return conn.cut();
    const pipe = async (from: Deno.TcpConn, to: Deno.TcpConn, field: "sent" | "received") => {
      const dec = new TextDecoder();
      const buf = new Uint8Array(64 * 1024);
      try {
        for (;;) {
          const n = await from.read(buf);
          if (n === null) break;
          conn[field] += dec.decode(buf.subarray(0, n), { stream: true });
          this.#notify();
          let off = 0;
          while (off < n) off += await to.write(buf.subarray(off, n));
        }
      } catch {
        // cut
      }
      conn.cut();
    };
    await Promise.all([pipe(client, upstream, "sent"), pipe(upstream, client, "received")]);
  }

  #notify(): void {
    for (const f of [...this.#changed]) f();
  }

  /** Stops listening and cuts every connection. */
  async close(): Promise<void> {
    this.release();
    this.#listener.close();
    for (const c of this.connections) c.cut();
    await this.#accepting.catch(() => {});
  }
}
