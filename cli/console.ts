/**
 * `otherix vm console NAME`: attaches the terminal to a VM's serial console (spec "Step 5 —
 * console access"; shared/api/console.ts).
 *
 * 1. `POST /v1/vms/{name}/console` with the bearer credential → a single-use ticket
 *    (errors as usual: `api_error: <code>: <message>`, or a transport error);
 * 2. WebSocket to the ticket's `websocket_path` on the same endpoint (`ws:` for `http:`,
 *    `wss:` for `https:`); a refusal before the upgrade is reported like any API error
 *    (`api_error: vm_invalid_state: …`);
 * 3. the session:
 *    - stdin is a terminal: it is put in raw mode (every key, Ctrl+C included, goes to the
 *      guest), `Connected to <name> (escape character is ^])` goes to stderr, and Ctrl+]
 *      (`CONSOLE_DETACH_BYTE`, 0x1D) detaches (`Detached.`). The terminal mode is restored
 *      on every way out: detach, remote close, errors, and SIGINT/SIGTERM/SIGHUP sent to the
 *      process;
 *    - stdin is not a terminal: bytes stream both ways unchanged (0x1D included); EOF on
 *      stdin sends what was read, closes the socket and ends the session.
 *
 * Outcome: {@link runConsole} resolves (exit 0) after a detach, stdin EOF, or the server
 * closing with 1000 (the VM stopped); it throws a {@link ConsoleClosedError} (exit 1) when
 * the server closes otherwise (1011: the node's agent went away) or a signal ends the session.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import type { IncomingMessage } from "node:http";
import { type RawData, WebSocket } from "ws";
import { type ConsoleTicket, ConsoleTicketSchema } from "../shared/api/console.ts";
import { CONSOLE_DETACH_BYTE } from "../shared/constants.ts";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { ApiClient, isConnectionRefused } from "./client.ts";
import { seg } from "./common.ts";
import { ApiCallError, CliError, TransportError } from "./errors.ts";
import { writeAllSync } from "./prompt.ts";

/** Signals that end a session (the terminal is restored first). */
export type ConsoleSignal = "SIGINT" | "SIGTERM" | "SIGHUP";

/** The process surroundings a console session uses (injectable for tests). */
export interface ConsoleTerminal {
  /** What the user types, as raw bytes (default `Deno.stdin.readable`). */
  stdin: ReadableStream<Uint8Array>;
  /** Writes guest output (default: all of it to stdout); resolves once written. */
  writeOut(bytes: Uint8Array): Promise<void>;
  /** Writes a status line (default: stderr). */
  writeErr(text: string): void;
  /** True when stdin is a terminal (raw mode, the ^] escape). */
  isTerminal(): boolean;
  /** Raw mode on/off (default `Deno.stdin.setRaw`; off restores the previous mode). */
  setRaw(raw: boolean): void;
  /** Calls `handler` on SIGINT, SIGTERM and SIGHUP; returns the unsubscribe function. */
  onSignal(handler: (signal: ConsoleSignal) => void): () => void;
}

/** The real process: stdin, stdout, stderr and signals. */
export function denoTerminal(): ConsoleTerminal {
  return {
    get stdin() {
      return Deno.stdin.readable;
    },
    writeOut: async (bytes) => {
      let off = 0;
      while (off < bytes.length) off += await Deno.stdout.write(bytes.subarray(off));
    },
    writeErr: (text) => writeAllSync(Deno.stderr, text),
    isTerminal: () => Deno.stdin.isTerminal(),
    setRaw: (raw) => Deno.stdin.setRaw(raw),
    onSignal: (handler) => {
      const signals: ConsoleSignal[] = ["SIGINT", "SIGTERM", "SIGHUP"];
      const listeners = signals.map((s) => [s, () => handler(s)] as const);
      for (const [s, fn] of listeners) Deno.addSignalListener(s, fn);
      return () => {
        for (const [s, fn] of listeners) Deno.removeSignalListener(s, fn);
      };
    },
  };
}

/** `partial` completed with {@link denoTerminal} (whose parts are only touched if used). */
function withDefaults(partial: Partial<ConsoleTerminal>): ConsoleTerminal {
  const deno = denoTerminal();
  return {
    get stdin() {
      return partial.stdin ?? deno.stdin;
    },
    writeOut: partial.writeOut ?? deno.writeOut,
    writeErr: partial.writeErr ?? deno.writeErr,
    isTerminal: partial.isTerminal ?? deno.isTerminal,
    setRaw: partial.setRaw ?? deno.setRaw,
    onSignal: partial.onSignal ?? deno.onSignal,
  };
}

/** Options of {@link runConsole}. */
export type RunConsoleOptions =
  & {
    /** The VM's name. */
    name: string;
    /** Timeout of the WebSocket handshake (and of the ticket request), ms (default 30 000). */
    timeoutMs?: number;
    /** Overrides of the process surroundings (default {@link denoTerminal}). */
    terminal?: Partial<ConsoleTerminal>;
  }
  & (
    | {
      /** The API client of the command (`connect()`): its endpoint and credential are used. */
      client: ApiClient;
    }
    | {
      /** API base URL (`http(s)://host:port`, optionally with a path prefix). */
      endpoint: string;
      /** Bearer credential (JWT or `otx_…` API token) used to request the ticket. */
      token?: string;
      /** `fetch` for the ticket request (default the global one). */
      fetch?: typeof fetch;
    }
  );

/** How a session ended without error. */
export type ConsoleOutcome = "detached" | "eof" | "vm-stopped";

/** The session ended abnormally: the server closed with a code other than 1000, or a signal. */
export class ConsoleClosedError extends CliError {
  /** WebSocket close code (1006: the connection dropped), or null for a signal. */
  readonly closeCode: number | null;

  constructor(message: string, closeCode: number | null) {
    super(message);
    this.name = "ConsoleClosedError";
    this.closeCode = closeCode;
  }

  render(): string {
    return `error: ${this.message}`;
  }
}

/** Output chunks queued for the terminal before the socket is paused. */
const MAX_QUEUED_WRITES = 64;

/**
 * Runs a console session (see the module doc).
 *
 * @returns how the session ended (exit status 0)
 * @throws ApiCallError (ticket or attach refused), TransportError (no usable answer), or
 *   ConsoleClosedError (abnormal close, signal); the terminal is restored before any throw
 */
export async function runConsole(opts: RunConsoleOptions): Promise<ConsoleOutcome> {
  const term = withDefaults(opts.terminal ?? {});
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const api = "client" in opts ? opts.client : new ApiClient({
    endpoint: opts.endpoint,
    token: opts.token,
    timeoutMs,
    fetch: opts.fetch,
  });
  const endpoint = api.endpoint;
  const ticket: ConsoleTicket = (await api.json(
    "POST",
    `/v1/vms/${seg(opts.name)}/console`,
    ConsoleTicketSchema,
  )).data;
  const url = new URL(endpoint + ticket.websocket_path);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = await openSocket(url, timeoutMs, endpoint);
  return await session(ws, opts.name, term);
}

/** Opens the console WebSocket. @throws ApiCallError, TransportError */
function openSocket(url: URL, timeoutMs: number, endpoint: string): Promise<WebSocket> {
  const what = `GET ${url.pathname}`;
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (e: CliError) => {
      if (settled) return;
      settled = true;
      ws.terminate();
      reject(e);
    };
    const ws = new WebSocket(url, { handshakeTimeout: timeoutMs, perMessageDeflate: false });
    ws.once("open", () => {
      settled = true;
      resolve(ws);
    });
    ws.once("unexpected-response", (_req: unknown, res: IncomingMessage) => {
      let body = "";
      res.on("data", (c: Buffer) => {
        if (body.length < 64 * 1024) body += c.toString("utf8");
      });
      res.on("end", () => {
        let env: ReturnType<typeof ErrorEnvelopeSchema.safeParse> | null = null;
        try {
          env = ErrorEnvelopeSchema.safeParse(JSON.parse(body));
        } catch { /* not JSON */ }
        if (env?.success) {
          const { code, message, details } = env.data.error;
          fail(new ApiCallError(code, message, details, res.statusCode));
        } else {
          fail(
            new TransportError(
              "request_failed",
              `unexpected response from ${what}: HTTP ${res.statusCode} (no WebSocket upgrade)`,
            ),
          );
        }
      });
    });
    ws.once("error", (e: Error) => {
      if (/handshake has timed out/i.test(e.message)) {
        fail(
          new TransportError(
            "request_timeout",
            `no console from ${endpoint} (${what}) within ${timeoutMs / 1000}s`,
          ),
        );
      } else if (isConnectionRefused(e)) {
        fail(
          new TransportError(
            "connection_refused",
            `cannot connect to ${endpoint} (${what}): connection refused`,
          ),
        );
      } else {
        fail(new TransportError("request_failed", `${what} to ${endpoint} failed: ${e.message}`));
      }
    });
  });
}

/** Runs the attached session until detach, EOF, remote close or a signal. */
async function session(
  ws: WebSocket,
  name: string,
  term: ConsoleTerminal,
): Promise<ConsoleOutcome> {
  const tty = term.isTerminal();
  let raw = false;
  let unsubscribe: () => void = () => {};
  const reader = term.stdin.getReader();
  // Guest output, written in order; the socket pauses while the terminal falls behind.
  let writes: Promise<void> = Promise.resolve();
  let queued = 0;
  let outputError: unknown = null;

  let finish!: (r: { outcome: ConsoleOutcome } | { error: CliError }) => void;
  const ended = new Promise<{ outcome: ConsoleOutcome } | { error: CliError }>((resolve) => {
    let done = false;
    finish = (r) => {
      if (done) return;
      done = true;
      resolve(r);
    };
  });

  ws.on("message", (data: RawData) => {
    const bytes = toBytes(data);
    queued++;
    if (queued > MAX_QUEUED_WRITES) ws.pause();
    writes = writes.then(() => term.writeOut(bytes)).catch((e) => {
      outputError ??= e;
      finish({
        error: new ConsoleClosedError(`cannot write output: ${(e as Error).message}`, null),
      });
    }).finally(() => {
      if (--queued === 0 && ws.isPaused) ws.resume();
    });
  });
  ws.on("close", (code: number, reason: Buffer) => {
    const why = reason.toString();
    if (code === 1000) finish({ outcome: "vm-stopped" });
    else {
      finish({
        error: new ConsoleClosedError(
          `console of ${name} closed by the server (${code}${why ? `: ${why}` : ""})`,
          code,
        ),
      });
    }
  });
  ws.on("error", () => {/* followed by "close" */});

  const pumpInput = async () => {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch {
        return finish({ outcome: "eof" });
      }
      if (r.done) return finish({ outcome: "eof" });
      let chunk = r.value;
      const esc = tty ? chunk.indexOf(CONSOLE_DETACH_BYTE) : -1;
      if (esc >= 0) chunk = chunk.subarray(0, esc);
      if (chunk.length > 0 && ws.readyState === WebSocket.OPEN) ws.send(chunk, { binary: true });
      if (esc >= 0) return finish({ outcome: "detached" });
    }
  };

  try {
    unsubscribe = term.onSignal((sig) =>
      finish({ error: new ConsoleClosedError(`console of ${name} interrupted by ${sig}`, null) })
    );
    term.writeErr(`Connected to ${name} (escape character is ^])\n`);
    if (tty) {
      term.setRaw(true);
      raw = true;
    }
    void pumpInput();
    const result = await ended;
    // Everything typed was handed to the socket before the close frame; output the server
    // sends until it answers the close is still shown.
    await closeSocket(ws);
    if (!outputError) await writes;
    restore();
    if ("error" in result) throw result.error;
    if (result.outcome === "detached") term.writeErr("\nDetached.\n");
    if (result.outcome === "vm-stopped") {
      term.writeErr(`\nConsole of ${name} closed: the VM stopped.\n`);
    }
    return result.outcome;
  } finally {
    restore();
    ws.terminate();
  }

  function restore() {
    unsubscribe();
    unsubscribe = () => {};
    reader.cancel().catch(() => {});
    if (raw) {
      raw = false;
      try {
        term.setRaw(false);
      } catch { /* not a terminal any more */ }
    }
  }
}

/**
 * Closes the socket with 1000 once everything sent has been flushed, and waits for the
 * server's close (at most 5 s), so output the server sent before closing is still shown.
 */
async function closeSocket(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return;
  const closed = new Promise<void>((resolve) => ws.once("close", () => resolve()));
  if (ws.readyState === WebSocket.OPEN) ws.close(1000);
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    closed,
    new Promise<void>((resolve) => timer = setTimeout(resolve, 5_000)),
  ]);
  clearTimeout(timer);
}

/** The bytes of a `ws` message. */
function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) {
    const out = new Uint8Array(data.reduce((n, b) => n + b.length, 0));
    let off = 0;
    for (const b of data) {
      out.set(b, off);
      off += b.length;
    }
    return out;
  }
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}
