/**
 * A minimal QEMU Machine Protocol client: JSON lines over a unix socket (QMP spec:
 * greeting → `qmp_capabilities` → commands). Asynchronous `{"event": …}` lines (`SHUTDOWN`,
 * `RESET`, `STOP`, `RESUME`, `POWERDOWN`, …) go to the listeners of {@link QmpClient.onEvent}.
 *
 * QEMU's QMP socket serves one client at a time, and it closes when QEMU exits, so the agent's
 * session doubles as QEMU's exit notification ({@link QmpClient.closed}; see agent/vms.ts).
 *
 * @module
 */

/** An `{"error": {"class", "desc"}}` reply. */
export class QmpError extends Error {
  readonly errorClass: string;
  constructor(errorClass: string, desc: string) {
    super(`QMP error ${errorClass}: ${desc}`);
    this.name = "QmpError";
    this.errorClass = errorClass;
  }
}

/** An asynchronous QMP event, e.g. `{event: "SHUTDOWN", data: {guest: true, reason}}`. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** When QEMU emitted it, ms since the epoch. */
  atMs: number;
}

/** Most events kept for the first {@link QmpClient.onEvent} listener. */
export const MAX_EVENT_BACKLOG = 100;

function deliver(listener: (e: QmpEvent) => void, ev: QmpEvent): void {
  try {
    listener(ev);
  } catch {
    // A listener's failure is its own business.
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** A connected QMP session (capabilities already negotiated). */
export class QmpClient {
  #conn: Deno.UnixConn;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  #closedLocally = false;
  #listeners = new Set<(e: QmpEvent) => void>();
  /** Events that arrived before the first listener (bounded). */
  #backlog: QmpEvent[] = [];
  /**
   * Resolves when the connection ends: EOF or an error (QEMU exited), or {@link close}
   * (then {@link closedLocally} is true).
   */
  readonly closed: Promise<void>;
  #greeting: Promise<unknown>;

  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
    let onGreeting!: (v: unknown) => void;
    let onGreetingError!: (e: Error) => void;
    this.#greeting = new Promise((res, rej) => {
      onGreeting = res;
      onGreetingError = rej;
    });
    this.#greeting.catch(() => {});
    this.closed = this.#readLoop(onGreeting, onGreetingError);
  }

  /**
   * Connects to the QMP socket at `path`, retrying while the socket does not exist yet or
   * refuses, until `deadline` (ms since epoch) or until `abort()` returns a reason to stop
   * (e.g. QEMU already exited). Negotiates capabilities. With `retry` false a missing or
   * refusing socket fails at once (probing for a leftover QEMU).
   *
   * @throws Error with the last connect error when the deadline passes or `abort` fires
   */
  static async connect(
    path: string,
    deadline: number,
    abort: () => string | null = () => null,
    retry = true,
  ): Promise<QmpClient> {
    let lastError = "socket not created yet";
    while (true) {
      const stop = abort();
      if (stop) throw new Error(stop);
      if (Date.now() > deadline) throw new Error(`QMP connect timed out: ${lastError}`);
      try {
        const conn = await Deno.connect({ transport: "unix", path });
        const client = new QmpClient(conn);
        try {
          await withTimeout(client.#greeting, deadline - Date.now(), "QMP greeting");
          await withTimeout(
            client.execute("qmp_capabilities"),
            deadline - Date.now(),
            "qmp_capabilities",
          );
        } catch (e) {
          client.close();
          throw e;
        }
        return client;
      } catch (e) {
        if (
          retry &&
          (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.ConnectionRefused)
        ) {
          lastError = (e as Error).message;
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * Runs a QMP command and returns its `return` value.
   *
   * @throws QmpError on an error reply; Error when the connection closes first
   */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error("QMP connection closed"));
    const id = this.#nextId++;
    const msg = JSON.stringify(
      args ? { execute: command, arguments: args, id } : {
        execute: command,
        id,
      },
    ) + "\n";
    const p = new Promise<unknown>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    this.#write(msg).catch((e) => {
      const pending = this.#pending.get(id);
      this.#pending.delete(id);
      pending?.reject(e as Error);
    });
    return p;
  }

  async #write(text: string): Promise<void> {
    const data = new TextEncoder().encode(text);
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  async #readLoop(
    onGreeting: (v: unknown) => void,
    onGreetingError: (e: Error) => void,
  ): Promise<void> {
    const decoder = new TextDecoder();
    let buf = "";
    let greeted = false;
    const chunk = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        buf += decoder.decode(chunk.subarray(0, n), { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line);
          } catch {
            continue;
          }
          if (!greeted && "QMP" in msg) {
            greeted = true;
            onGreeting(msg.QMP);
            continue;
          }
          if ("event" in msg) {
            this.#emit(msg);
            continue;
          }
          const id = typeof msg.id === "number" ? msg.id : undefined;
          const pending = id !== undefined ? this.#pending.get(id) : undefined;
          if (!pending || id === undefined) continue;
          this.#pending.delete(id);
          if ("error" in msg) {
            const err = msg.error as { class?: string; desc?: string };
            pending.reject(new QmpError(err.class ?? "GenericError", err.desc ?? "unknown"));
          } else {
            pending.resolve(msg.return);
          }
        }
      }
    } catch {
      // Connection reset: treated as closed.
    } finally {
      this.#closed = true;
      const err = new Error("QMP connection closed");
      if (!greeted) onGreetingError(err);
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      try {
        this.#conn.close();
      } catch {
        // already closed
      }
    }
  }

  #emit(msg: Record<string, unknown>): void {
    const ts = msg.timestamp as { seconds?: number; microseconds?: number } | undefined;
    const ev: QmpEvent = {
      event: String(msg.event),
      data: (msg.data && typeof msg.data === "object" ? msg.data : {}) as Record<string, unknown>,
      atMs: ts?.seconds !== undefined
        ? ts.seconds * 1000 + Math.floor((ts.microseconds ?? 0) / 1000)
        : Date.now(),
    };
    if (this.#listeners.size === 0) {
      if (this.#backlog.length < MAX_EVENT_BACKLOG) this.#backlog.push(ev);
      return;
    }
    for (const l of [...this.#listeners]) deliver(l, ev);
  }

  /**
   * Calls `listener` for every asynchronous event QEMU sends on this session, in order. The
   * first listener also receives, synchronously before this returns, the events that arrived
   * while there was none (up to {@link MAX_EVENT_BACKLOG}): a guest may power off between the
   * connection and the moment its owner subscribes.
   *
   * @returns a function that removes the listener
   */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.#listeners.add(listener);
    const backlog = this.#backlog.splice(0);
    for (const ev of backlog) deliver(listener, ev);
    return () => this.#listeners.delete(listener);
  }

  /** True once {@link close} was called (the connection did not end on QEMU's side). */
  get closedLocally(): boolean {
    return this.#closedLocally;
  }

  /** Closes the connection (QEMU keeps running). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closedLocally = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }
}

/** Rejects with `${what} timed out` when `p` takes longer than `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), Math.max(0, ms));
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
