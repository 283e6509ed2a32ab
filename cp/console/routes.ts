/**
 * Console routes of the public API (shared/api/console.ts; spec "Step 5 — console access"),
 * mounted at `/v1/vms` before the VM routes:
 *
 * - `POST /v1/vms/{name}/console` (Bearer credential, `vm:console`: admin, operator,
 *   developer) → 201 {@link ConsoleTicket}: a single-use token valid `ttlSeconds`
 *   (config `console.token_ttl_seconds`, default `DEFAULT_CONSOLE_TOKEN_TTL_SECONDS`). 404
 *   `vm_not_found`; 409 `vm_invalid_state` (details.status) when the VM is `pending`,
 *   `stopped`, `failed` or `deleting` (no QEMU to attach to).
 * - `GET /v1/vms/{name}/console?token=` (no Authorization header: the token is the
 *   credential) → WebSocket. In order, before the upgrade: 400 `validation_failed` (not a
 *   WebSocket upgrade, or no token), the token is consumed (401 `unauthenticated` unknown or
 *   reused or for another VM; 401 `token_expired`), 403 `permission_denied` (its user is gone
 *   or lost `vm:console`), 404 `vm_not_found` (also when the VM was re-created since), then the
 *   agent's console is opened (its refusals passed on: 404, 409 `vm_invalid_state`; 502
 *   `agent_unreachable`), and only then is the client upgraded.
 * - Bridge: frames pass both ways unchanged (binary; text frames as text). Closes with 1000
 *   when the agent closes with 1000 (the VM stopped), 1011 on any other agent close or
 *   failure, 1008 for a client that falls more than {@link MAX_CLIENT_BUFFER_BYTES} behind.
 *   A client leaving closes the agent connection (the agent drops QEMU's serial connection
 *   after its last viewer).
 * - Logs one line per attach and detach: vm, vm id, user id, viewers on this replica. The
 *   token never reaches a log (the request logger logs paths without query strings).
 *
 * @module
 */
import { Hono } from "hono";
import type { Buffer } from "node:buffer";
import type { RawData, WebSocket as WsSocket } from "ws";
import { ConsoleQuerySchema, type ConsoleTicket } from "../../shared/api/console.ts";
import { DEFAULT_CONSOLE_TOKEN_TTL_SECONDS } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { can } from "../../shared/rbac.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import { requireVmOwnership } from "../auth/ownership.ts";
import type { CpContext } from "../context.ts";
import { keys, type NodeRecord } from "../repo/records.ts";
import { getUser } from "../users/service.ts";
import { validate } from "../routes/validate.ts";
import { getVm } from "../vms/service.ts";
import { ResourceNameSchema } from "../../shared/api/common.ts";
import { z } from "zod";

const NameParam = z.object({ name: ResourceNameSchema });
import { openAgentConsole } from "./agent_socket.ts";
import { issueConsoleToken, redeemConsoleToken } from "./tickets.ts";

/** Options of {@link consoleRoutes}. */
export interface ConsoleRoutesOptions {
  /**
   * Token lifetime, seconds (default: config `console.token_ttl_seconds`, else
   * `DEFAULT_CONSOLE_TOKEN_TTL_SECONDS`).
   */
  ttlSeconds?: number;
  /** Clock for issuing and checking tokens (default `ctx.now`). */
  now?: () => Date;
}

/** VM statuses with no QEMU to attach to: a ticket is refused at once (409). */
const NOT_ATTACHABLE = new Set(["pending", "stopped", "failed", "deleting"]);

/** Unsent output a browser/CLI client may fall behind by before it is dropped (1008), bytes. */
export const MAX_CLIENT_BUFFER_BYTES = 4 * 1024 * 1024;

/** The console routes (see the module doc); mount at `/v1/vms` before the VM routes. */
export function consoleRoutes(ctx: CpContext, opts: ConsoleRoutesOptions = {}): Hono<AppEnv> {
  const now = opts.now ?? ctx.now;
  const ttlSeconds = opts.ttlSeconds ??
    ctx.cfg.console?.token_ttl_seconds ??
    DEFAULT_CONSOLE_TOKEN_TTL_SECONDS;
  const viewers = new Map<string, number>();
  const app = new Hono<AppEnv>();

  app.post(
    "/:name/console",
    authMiddleware(ctx.store, ctx.jwtSecret, now, () => ctx.cache),
    requirePermission("vm:console"),
    validate("param", NameParam),
    requireVmOwnership(ctx),
    async (c) => {
      const vm = await getVm(ctx, c.req.valid("param").name);
      if (NOT_ATTACHABLE.has(vm.status)) {
        throw new ApiError(
          "vm_invalid_state",
          `vm "${vm.name}" is ${vm.status}: its console is available while it runs`,
          { status: vm.status },
        );
      }
      const { token, record } = await issueConsoleToken(
        ctx.store,
        vm,
        c.get("user").id,
        ttlSeconds,
        now(),
      );
      const ticket: ConsoleTicket = {
        token,
        expires_at: record.expires_at,
        websocket_path: `/v1/vms/${encodeURIComponent(vm.name)}/console?token=${token}`,
      };
      return c.json(ticket, 201);
    },
  );

  app.get(
    "/:name/console",
    validate("param", NameParam),
    validate("query", ConsoleQuerySchema),
    async (c) => {
      const { name } = c.req.valid("param");
      if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
        throw new ApiError("validation_failed", "this endpoint only serves WebSocket upgrades");
      }
      const { token } = c.req.valid("query");
      const rec = await redeemConsoleToken(ctx.store, token, name, now());
      const user = await getUser(ctx.store, rec.user_id);
      if (!user || !can(user.role, "vm:console")) {
        throw new ApiError(
          "permission_denied",
          `the console token's user may no longer use the console of vm "${name}"`,
          { permission: "vm:console" },
        );
      }
      const vm = await getVm(ctx, name);
      if (vm.id !== rec.vm_id) throw new ApiError("vm_not_found", `vm "${name}" was re-created`);
      const node = (await ctx.store.get<NodeRecord>(keys.node(vm.node)))?.value;
      if (!node?.endpoint) {
        throw new ApiError("agent_unreachable", `node ${vm.node} has no agent endpoint`);
      }
      const agent = await openAgentConsole(
        { node: node.name, endpoint: node.endpoint, vmId: vm.id },
        {
          caPem: ctx.pki.ca.certPem,
          certPem: ctx.pki.replica.certPem,
          keyPem: ctx.pki.replica.keyPem,
        },
      );
      let upgrade: { socket: WebSocket; response: Response };
      try {
        upgrade = Deno.upgradeWebSocket(c.req.raw);
      } catch (e) {
        agent.terminate();
        throw new ApiError(
          "validation_failed",
          `invalid WebSocket upgrade: ${(e as Error).message}`,
        );
      }
      const who = { vm: vm.name, vm_id: vm.id, user_id: user.id };
      bridge(upgrade.socket, agent, {
        attached: () => {
          const n = (viewers.get(vm.name) ?? 0) + 1;
          viewers.set(vm.name, n);
          ctx.log.info("console attached", { ...who, viewers: n });
        },
        detached: (code) => {
          const n = Math.max(0, (viewers.get(vm.name) ?? 1) - 1);
          if (n === 0) viewers.delete(vm.name);
          else viewers.set(vm.name, n);
          ctx.log.info("console detached", { ...who, viewers: n, code });
        },
      });
      return upgrade.response;
    },
  );

  return app;
}

/** Reads VM `name`. @throws ApiError `vm_not_found` */
/**
 * Pipes the client socket (Deno's, not yet open) and the open agent socket into each other.
 * Agent output that arrives before the client is open is queued.
 */
function bridge(
  client: WebSocket,
  agent: WsSocket,
  events: { attached(): void; detached(code: number): void },
): void {
  client.binaryType = "arraybuffer";
  const queued: Uint8Array[] = [];
  let attached = false;
  let done = false;
  const finish = (code: number) => {
    if (done) return;
    done = true;
    if (attached) events.detached(code);
  };
  const closeClient = (code: number, reason: string) => {
    if (client.readyState === WebSocket.CONNECTING || client.readyState === WebSocket.OPEN) {
      try {
        client.close(code, reason.slice(0, 120));
      } catch { /* closing */ }
    }
  };
  const toClient = (bytes: Uint8Array) => {
    if (client.bufferedAmount > MAX_CLIENT_BUFFER_BYTES) {
      closeClient(1008, "console client too slow");
      agent.close(1000);
      return;
    }
    client.send(bytes);
  };

  agent.on("message", (data: RawData) => {
    const bytes = toBytes(data);
    if (client.readyState === WebSocket.OPEN) toClient(bytes);
    else if (client.readyState === WebSocket.CONNECTING) queued.push(bytes);
  });
  agent.on("close", (code: number, reason: Buffer) => {
    const why = reason.toString() || (code === 1000 ? "vm stopped" : "agent connection lost");
    closeClient(code === 1000 ? 1000 : 1011, why);
  });
  agent.on("error", () => {
    closeClient(1011, "agent connection failed");
    agent.terminate();
  });

  client.onopen = () => {
    attached = true;
    events.attached();
    for (const b of queued.splice(0)) toClient(b);
    if (agent.readyState !== agent.OPEN) closeClient(1011, "agent connection lost");
  };
  client.onmessage = (e: MessageEvent) => {
    if (agent.readyState !== agent.OPEN) return;
    if (typeof e.data === "string") agent.send(e.data, { binary: false });
    else agent.send(new Uint8Array(e.data as ArrayBuffer), { binary: true });
  };
  client.onclose = (e: CloseEvent) => {
    finish(e.code);
    if (agent.readyState === agent.OPEN || agent.readyState === agent.CONNECTING) {
      agent.close(1000);
    }
  };
  client.onerror = () => {
    if (agent.readyState === agent.OPEN) agent.close(1000);
  };
}

/** The bytes of a `ws` message. */
function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) {
    const size = data.reduce((n, b) => n + b.length, 0);
    const out = new Uint8Array(size);
    let off = 0;
    for (const b of data) {
      out.set(b, off);
      off += b.length;
    }
    return out;
  }
  return data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data);
}
