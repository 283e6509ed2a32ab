/**
 * The agent's serial console bridge: `GET /v1/vms/{id}/console` upgraded to a WebSocket and
 * bridged to the VM's QEMU serial socket (shared/api/agent.ts, shared/api/console.ts).
 *
 * - Who may attach: a verified client certificate with O = `CP_CERT_ORG` (the control plane),
 *   else 403 `permission_denied` before the upgrade (401 `unauthenticated` without one).
 * - Refusals before the upgrade, as error envelopes: 404 `vm_not_found`, 409
 *   `vm_invalid_state` (from {@link ConsoleVms.consoleTarget}), 400 `validation_failed` for an
 *   id that is not a UUID, 404 `not_found` for another path, 409 `vm_invalid_state` when the
 *   serial socket cannot be connected (QEMU is gone), 502 `agent_unreachable` once
 *   {@link ConsoleBridge.closeAll} ran (the agent is stopping).
 * - One connection to QEMU's serial socket per VM, shared by every viewer: QEMU's socket
 *   chardev serves one client at a time. Guest output goes to every viewer as binary frames;
 *   input from any viewer (binary frames, or text frames taken as UTF-8) goes to the guest.
 *   Output starts at the moment of attach (no replay: press Enter for a fresh prompt).
 * - The serial connection is closed when the last viewer leaves.
 * - Close codes: 1000 when QEMU exits (its serial socket reaches EOF, or the VM's phase leaves
 *   `running`/`paused`/`stopping`), 1001 from {@link ConsoleBridge.closeAll} (the agent
 *   stops), 1011 when the serial connection fails, 1008 for a viewer that cannot keep up
 *   (more than {@link MAX_VIEWER_BUFFER_BYTES} of output unsent) or whose input the guest
 *   does not read (more than {@link MAX_PENDING_INPUT_BYTES} queued); such a viewer stops
 *   receiving output at once.
 * - Logs one line per attach and detach: vm id, the control plane's CN, viewer count.
 *
 * @module
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { Buffer } from "node:buffer";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import type { VmPhase } from "../shared/api/vm_runtime.ts";
import { CP_CERT_ORG } from "../shared/constants.ts";
import { ApiError } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { peerOf, refuseUpgrade } from "../shared/tls.ts";

/** What the bridge needs from the VM manager (agent/vms.ts `VmManager` provides it). */
export interface ConsoleVms {
  /**
   * Where VM `id`'s serial console is, while its QEMU runs.
   *
   * @throws ApiError `vm_not_found` (unknown VM), `vm_invalid_state` (QEMU not running),
   *   `validation_failed` (id not a UUID)
   */
  consoleTarget(id: string): { serialSock: string };
  /**
   * Calls `cb` after every phase change of any VM; returns the unsubscribe function.
   * (`cb` receives at least `{id, phase}`, e.g. the `ObservedVm`.)
   */
  subscribe(cb: (vm: { id: string; phase: VmPhase }) => void): () => void;
}

/** Dependencies of {@link createConsoleUpgrade}. */
export interface ConsoleDeps {
  vms: ConsoleVms;
  log: Logger;
}

/** The console bridge: the `onUpgrade` handler of `serveTls`, and its shutdown. */
export interface ConsoleBridge {
  /** Pass as `serveTls({onUpgrade})`: serves `GET /v1/vms/{id}/console`. */
  onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Closes every viewer with 1001 and every serial connection; stops listening for phases. */
  closeAll(): void;
  /** Viewers attached to VM `id` (0 when none). */
  viewers(id: string): number;
  /** VMs with an open serial connection (for tests: none after the last viewer left). */
  openSerialConnections(): number;
}

/** Phases in which QEMU runs and its serial socket may be attached. */
const ATTACHABLE: ReadonlySet<VmPhase> = new Set(["running", "paused", "stopping"]);

/** Unsent output a viewer may fall behind by before it is dropped (1008), bytes. */
export const MAX_VIEWER_BUFFER_BYTES = 4 * 1024 * 1024;
/** Largest input frame a viewer may send, bytes. */
export const MAX_INPUT_FRAME_BYTES = 64 * 1024;
/** Input queued for a guest that does not read it, before the sending viewer is dropped. */
export const MAX_PENDING_INPUT_BYTES = 1024 * 1024;

const PATH_RE = /^\/v1\/vms\/([^/]+)\/console$/;

/** One VM's shared serial connection and its viewers. */
class SerialSession {
  readonly viewers = new Set<WebSocket>();
  #writes: Promise<unknown> = Promise.resolve();
  /** Input bytes queued for the guest and not yet written. */
  #pendingInput = 0;
  #closed = false;

  constructor(
    readonly id: string,
    readonly conn: Deno.UnixConn,
    readonly onEnd: (s: SerialSession) => void,
    readonly log: Logger,
  ) {
    void this.#pump();
  }

  async #pump(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    let reason: { code: number; why: string } = { code: 1000, why: "vm stopped" };
    try {
      for (;;) {
        const n = await this.conn.read(buf);
        if (n === null) break; // QEMU closed its end: it exited
        const chunk = buf.slice(0, n);
        for (const ws of [...this.viewers]) {
          if (ws.bufferedAmount > MAX_VIEWER_BUFFER_BYTES) this.drop(ws, 1008, "viewer too slow");
          else ws.send(chunk, { binary: true });
        }
      }
    } catch (e) {
      if (this.#closed) return;
      reason = { code: 1011, why: "serial connection failed" };
      this.log.warn("console: serial connection failed", { vm_id: this.id, err: e });
    }
    this.close(reason.code, reason.why);
  }

  /** Adds a viewer: its frames become guest input; it leaves when its socket closes. */
  add(ws: WebSocket, peer: string): void {
    this.viewers.add(ws);
    this.log.info("console: viewer attached", {
      vm_id: this.id,
      peer,
      viewers: this.viewers.size,
    });
    ws.on("message", (data: RawData) => {
      if (!this.viewers.has(ws)) return;
      const bytes = toBytes(data);
      if (this.#pendingInput + bytes.length > MAX_PENDING_INPUT_BYTES) {
        this.drop(ws, 1008, "input faster than the guest reads it");
        return;
      }
      this.write(bytes);
    });
    ws.on("error", () => ws.terminate());
    ws.on("close", () => this.drop(ws, 1000, ""));
  }

  /**
   * Removes a viewer (idempotent) and closes its socket with `code`; the last viewer leaving
   * closes the serial connection, freeing QEMU's one client slot.
   */
  drop(ws: WebSocket, code: number, why: string): void {
    if (!this.viewers.delete(ws)) return;
    if (ws.readyState === ws.OPEN) ws.close(code, why);
    this.log.info("console: viewer detached", {
      vm_id: this.id,
      viewers: this.viewers.size,
      ...(why ? { reason: why } : {}),
    });
    if (this.viewers.size === 0) this.close(1000, "no viewers");
  }

  /** Queues `data` for the guest (writes stay in order). */
  write(data: Uint8Array): void {
    if (this.#closed) return;
    this.#pendingInput += data.length;
    this.#writes = this.#writes.then(async () => {
      let off = 0;
      while (off < data.length && !this.#closed) off += await this.conn.write(data.subarray(off));
    }).catch((e) => {
      if (!this.#closed) this.log.warn("console: serial write failed", { vm_id: this.id, err: e });
    }).finally(() => this.#pendingInput -= data.length);
  }

  /** Closes every viewer with `code` and the serial connection (idempotent). */
  close(code: number, why: string): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const ws of this.viewers) ws.close(code, why);
    this.viewers.clear();
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.onEnd(this);
  }

  get closed(): boolean {
    return this.#closed;
  }
}

/**
 * Creates the console bridge. Wire `onUpgrade` into the agent's `serveTls` and call
 * `closeAll()` when the agent stops (before closing the server).
 */
export function createConsoleUpgrade(deps: ConsoleDeps): ConsoleBridge {
  const { vms, log } = deps;
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_INPUT_FRAME_BYTES });
  const sessions = new Map<string, SerialSession>();
  const connecting = new Map<string, Promise<SerialSession>>();
  let shuttingDown = false;

  const unsubscribe = vms.subscribe((vm) => {
    if (ATTACHABLE.has(vm.phase)) return;
    sessions.get(vm.id)?.close(1000, "vm stopped");
  });

  /** The VM's serial session, connecting it when there is none. */
  const sessionFor = (id: string, serialSock: string): Promise<SerialSession> => {
    const open = sessions.get(id);
    if (open && !open.closed) return Promise.resolve(open);
    const pending = connecting.get(id);
    if (pending) return pending;
    const p = (async () => {
      let conn: Deno.UnixConn;
      try {
        // Immediate: QEMU listens (server=on,wait=off) while it runs; refused/ENOENT otherwise.
        conn = await Deno.connect({ transport: "unix", path: serialSock });
      } catch (e) {
        throw new ApiError(
          "vm_invalid_state",
          `the serial console of vm ${id} is not available: ${(e as Error).message}`,
        );
      }
      const s = new SerialSession(id, conn, (ended) => {
        if (sessions.get(id) === ended) sessions.delete(id);
      }, log);
      sessions.set(id, s);
      return s;
    })();
    connecting.set(id, p);
    p.finally(() => connecting.delete(id)).catch(() => {});
    return p;
  };

  const attach = (s: SerialSession, ws: WebSocket, peer: string) => {
    if (s.closed || shuttingDown) {
      ws.close(shuttingDown ? 1001 : 1000, shuttingDown ? "agent stopping" : "vm stopped");
      return;
    }
    s.add(ws, peer);
  };

  const handle = async (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const peer = peerOf(req);
    if (!peer.authorized) {
      throw new ApiError("unauthenticated", "a client certificate from the cluster CA is required");
    }
    if (peer.organization !== CP_CERT_ORG) {
      throw new ApiError(
        "permission_denied",
        `client certificate CN=${peer.commonName} O=${peer.organization} is not a control plane`,
      );
    }
    const path = new URL(req.url ?? "/", "https://agent.invalid").pathname;
    const m = PATH_RE.exec(path);
    if (!m || req.method !== "GET") {
      throw new ApiError("not_found", `no route for ${req.method} ${path}`);
    }
    if (shuttingDown) throw new ApiError("agent_unreachable", "the agent is stopping");
    let id: string;
    try {
      id = decodeURIComponent(m[1]);
    } catch {
      throw new ApiError("validation_failed", `vm id ${JSON.stringify(m[1])} is not a UUID`);
    }
    const { serialSock } = vms.consoleTarget(id);
    const session = await sessionFor(id, serialSock);
    if (socket.destroyed) {
      // The caller left while the serial socket was connecting.
      if (session.viewers.size === 0) session.close(1000, "no viewers");
      return;
    }
    let upgraded = false;
    wss.handleUpgrade(req, socket, head, (ws) => {
      upgraded = true;
      attach(session, ws, peer.commonName ?? "?");
    });
    // `ws` completes (or aborts, answering 400) synchronously without `verifyClient`.
    if (!upgraded && session.viewers.size === 0) session.close(1000, "no viewers");
  };

  return {
    onUpgrade(req, socket, head) {
      socket.on("error", () => socket.destroy());
      handle(req, socket, head).catch((e) => {
        const err = e instanceof ApiError
          ? e
          : new ApiError("internal_error", "console attach failed");
        if (!(e instanceof ApiError)) log.error("console: attach failed", { err: e });
        refuseUpgrade(socket, err);
      });
    },
    closeAll() {
      shuttingDown = true;
      unsubscribe();
      for (const s of [...sessions.values()]) s.close(1001, "agent stopping");
    },
    viewers: (id) => sessions.get(id)?.viewers.size ?? 0,
    openSerialConnections: () => sessions.size,
  };
}

/** The bytes of a `ws` message (text frames arrive as their UTF-8 bytes). */
function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return data;
}
