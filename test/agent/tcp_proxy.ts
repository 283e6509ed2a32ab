/**
 * A tiny loopback TCP forwarder for failover tests: it stands for one path to a control-plane
 * replica, counts its connections and can be killed like a dead replica (listener and every
 * open connection closed at once).
 *
 * @module
 */

/** A running forwarder. */
export interface TcpProxy {
  /** `https://<hostname>:<port>` of the listening side. */
  url: string;
  hostname: string;
  port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Client connections open now. */
  readonly open: number;
  /** Closes the listener and every open connection (a dead replica: refused, reset). */
  kill(): Promise<void>;
}

/**
 * Listens on `listen` (default `127.0.0.1`, a random port) and forwards every connection to
 * `target` (a connection whose target refuses is closed at once).
 *
 * @throws Deno.errors.AddrInUse (or another bind error) when `listen` cannot be bound
 */
export function startTcpProxy(
  target: { hostname: string; port: number },
  listen: { hostname?: string; port?: number } = {},
): TcpProxy {
  const hostname = listen.hostname ?? "127.0.0.1";
  const listener = Deno.listen({ hostname, port: listen.port ?? 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const clients = new Set<Deno.Conn>();
  const upstreams = new Set<Deno.Conn>();
  let accepted = 0;
  let killed = false;
  const close = (c: Deno.Conn) => {
    try {
      c.close();
    } catch { /* already closed */ }
  };
  const forward = async (conn: Deno.Conn) => {
    let upstream: Deno.Conn;
    try {
      upstream = await Deno.connect(target);
    } catch {
      clients.delete(conn);
      close(conn);
      return;
    }
    if (killed) {
      close(upstream);
      return;
    }
    upstreams.add(upstream);
    // Whichever side ends first ends both.
    await Promise.race([
      conn.readable.pipeTo(upstream.writable).catch(() => {}),
      upstream.readable.pipeTo(conn.writable).catch(() => {}),
    ]);
    clients.delete(conn);
    upstreams.delete(upstream);
    close(conn);
    close(upstream);
  };
  const serving = (async () => {
    try {
      for await (const conn of listener) {
        accepted++;
        clients.add(conn);
        void forward(conn);
      }
    } catch { /* listener closed */ }
  })();
  return {
    url: `https://${hostname}:${port}`,
    hostname,
    port,
    get accepted() {
      return accepted;
    },
    get open() {
      return clients.size;
    },
    async kill() {
      if (killed) return;
      killed = true;
      listener.close();
      for (const c of [...clients, ...upstreams]) close(c);
      clients.clear();
      upstreams.clear();
      await serving;
    },
  };
}
