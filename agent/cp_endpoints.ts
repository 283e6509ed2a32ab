/**
 * The agent's list of control-plane URLs (issue 11: agents fail over between replicas).
 *
 * - The list starts with `bootstrap.cp_url` (the configured URL; always kept, always first)
 *   and learns the replicas from each heartbeat response's `control_planes`
 *   (shared/api/agent.ts; the control plane fills it from its replica registry,
 *   cp/cluster/replicas.ts). An empty `control_planes` (an older control plane, or one whose
 *   registry is not loaded yet) teaches nothing and keeps the list as it is.
 * - {@link CpEndpoints.current} is the URL to call. {@link CpEndpoints.failed} (a
 *   connection-level failure: refused, reset, TLS failure, timeout without an answer) moves to
 *   the next URL, round robin; {@link CpEndpoints.succeeded} sticks to the URL that answered.
 * - The list is persisted to `<state>/control-planes.json` (`{"control_planes": [...]}`,
 *   mode 0600, atomically: agent/fsutil.ts `writeFileAtomic`), so a restarted agent whose
 *   configured URL is down still reaches another replica. A corrupt file is ignored with a
 *   Warn line.
 * - Validation: only `https` URLs without credentials, query or fragment; trailing slashes
 *   dropped; de-duplicated; at most {@link MAX_CP_ENDPOINTS} (the configured URL and the one
 *   that answered are never the ones dropped).
 *
 * Every URL, configured or learnt, gets the same server verification: the cluster CA and a
 * control-plane certificate (agent/cp_client.ts, shared/tls.ts `requestTls`).
 *
 * Logs: one Warn line per failover (`<component>: control plane unreachable; trying the next
 * replica`, with `from`, `to`, `err`) — after a whole round without an answer further
 * rotations are Debug lines — and one Info line (`<component>: control plane reachable
 * again`) at the first answer after a failover.
 *
 * @module
 */
import { z } from "zod";
import type { Logger } from "../shared/log.ts";
import { errorMessage, writeFileAtomic } from "./fsutil.ts";

/** File name of the persisted list in the agent's state dir. */
export const CP_ENDPOINTS_FILE = "control-planes.json";

/**
 * Most URLs kept (the configured one included): the heartbeat response's own cap
 * (shared/api/agent.ts `HeartbeatResponseSchema.control_planes`).
 */
export const MAX_CP_ENDPOINTS = 16;

/** Shape of `control-planes.json`. */
const EndpointsFileSchema = z.object({
  control_planes: z.array(z.string()).max(MAX_CP_ENDPOINTS),
}).strict();

/**
 * The canonical form of a control-plane URL (WHATWG-normalized, trailing slashes removed), or
 * null when it is not an acceptable one: not `https`, with credentials, a query or a fragment.
 */
export function normalizeCpUrl(url: string): string | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  if (u.protocol !== "https:" || !u.hostname || u.username || u.password) return null;
  if (u.search || u.hash) return null;
  return u.href.replace(/\/+$/, "");
}

/** Options of {@link CpEndpoints.load}. */
export interface CpEndpointsOptions {
  /** `bootstrap.cp_url`; omitted: the persisted list only. */
  configured?: string;
  /** Where the list is persisted (`<state>/control-planes.json`); omitted: memory only. */
  file?: string;
  log: Logger;
}

/** The agent's control-plane URLs with failover (see the module doc). */
export class CpEndpoints {
  #configured: string | null;
  #list: string[];
  #current: string | null;
  #file: string | null;
  #log: Logger;
  /** Failovers since the last answer. */
  #failovers = 0;
  /** Serializes writes of the file. */
  #writing: Promise<void> = Promise.resolve();

  /**
   * An in-memory list (nothing persisted) of `configured` followed by `learned`.
   *
   * @throws Error when `configured` is not an https URL
   */
  constructor(
    configured: string | undefined,
    log: Logger,
    learned: string[] = [],
    file: string | null = null,
  ) {
    this.#log = log;
    this.#file = file;
    this.#configured = null;
    if (configured !== undefined) {
      this.#configured = normalizeCpUrl(configured);
      if (this.#configured === null) {
        throw new Error(`bootstrap.cp_url must be an https:// URL, got ${configured}`);
      }
    }
    this.#list = this.#compose(learned, null);
    this.#current = this.#list[0] ?? null;
  }

  /**
   * The list for `configured` with the persisted one (`file`) after it. A missing file is an
   * empty list; an unreadable or invalid one is ignored with a Warn line.
   *
   * @throws Error when `configured` is not an https URL
   */
  static async load(o: CpEndpointsOptions): Promise<CpEndpoints> {
    let learned: string[] = [];
    if (o.file) {
      try {
        const raw = JSON.parse(await Deno.readTextFile(o.file));
        const parsed = EndpointsFileSchema.parse(raw).control_planes;
        const bad = parsed.filter((u) => normalizeCpUrl(u) === null);
        if (bad.length) throw new Error(`not https URLs: ${bad.join(", ")}`);
        learned = parsed;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) {
          o.log.warn("control planes: ignoring the persisted list", {
            file: o.file,
            err: e instanceof z.ZodError
              ? e.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")
              : errorMessage(e),
          });
        }
      }
    }
    return new CpEndpoints(o.configured, o.log, learned, o.file ?? null);
  }

  /** Every known URL: the configured one first, then the learnt ones in their order. */
  list(): string[] {
    return [...this.#list];
  }

  /**
   * The URL to call now.
   *
   * @throws Error when no URL is known (no `bootstrap.cp_url` and nothing persisted)
   */
  current(): string {
    if (this.#current === null) {
      throw new Error("no control-plane URL: set bootstrap.cp_url");
    }
    return this.#current;
  }

  /**
   * Records a connection-level failure of `url` (refused, reset, TLS failure, timeout
   * without an answer; never an HTTP error answer). When `url` is the current one, moves to
   * the next URL (round robin) and logs the failover; when another caller has already moved
   * on, changes nothing.
   *
   * @param component prefix of the log line (`heartbeat`, `report`, `renewal`)
   * @returns the URL to call now (the same one when it is the only URL)
   */
  failed(url: string, err: unknown, component: string): string {
    if (this.#current !== url || this.#list.length < 2) return this.current();
    const i = this.#list.indexOf(url);
    const next = this.#list[(i + 1) % this.#list.length];
    this.#current = next;
    this.#failovers++;
    const fields = { from: url, to: next, err: errorMessage(err) };
    const msg = `${component}: control plane unreachable; trying the next replica`;
    // After a whole round without an answer the rotation goes on quietly.
    if (this.#failovers <= this.#list.length) this.#log.warn(msg, fields);
    else this.#log.debug(msg, fields);
    return next;
  }

  /**
   * Records an answer (any HTTP status) from `url`: the agent sticks to it. The first answer
   * after a failover logs `<component>: control plane reachable again`.
   */
  succeeded(url: string, component: string): void {
    if (this.#list.includes(url)) this.#current = url;
    if (this.#failovers > 0) {
      this.#log.info(`${component}: control plane reachable again`, {
        cp_url: url,
        failovers: this.#failovers,
      });
      this.#failovers = 0;
    }
  }

  /**
   * Learns the replicas from a heartbeat response (`control_planes`, the answering replica
   * first) that `answeredBy` returned. The new list is the configured URL, then `urls`, then
   * `answeredBy` (it answered, so it stays); invalid URLs are skipped with a Warn line; an
   * empty `urls` changes nothing. A changed list is persisted (a write failure is logged and
   * the list kept in memory).
   *
   * @returns true when the list changed
   */
  async learn(urls: string[], answeredBy: string): Promise<boolean> {
    if (urls.length === 0) return false;
    const valid = urls.filter((u) => normalizeCpUrl(u) !== null);
    if (valid.length < urls.length) {
      this.#log.warn("control planes: ignoring invalid URLs from the control plane", {
        urls: urls.filter((u) => normalizeCpUrl(u) === null),
      });
    }
    const next = this.#compose(valid, answeredBy);
    if (next.join("\n") === this.#list.join("\n")) return false;
    this.#log.info("control planes: replica list changed", { control_planes: next });
    this.#list = next;
    if (this.#current === null || !next.includes(this.#current)) this.#current = next[0];
    await this.#persist();
    return true;
  }

  /** Waits for pending writes of the file (tests, shutdown). */
  flushed(): Promise<void> {
    return this.#writing;
  }

  /** `[configured, ...learned, keep]` normalized, de-duplicated, capped (`keep` kept). */
  #compose(learned: string[], keep: string | null): string[] {
    const norm = [this.#configured, ...learned.map(normalizeCpUrl)];
    let out = [...new Set(norm.filter((u): u is string => u !== null))];
    const keepUrl = keep === null ? null : normalizeCpUrl(keep);
    if (keepUrl !== null && !out.slice(0, MAX_CP_ENDPOINTS).includes(keepUrl)) {
      out = [...out.filter((u) => u !== keepUrl).slice(0, MAX_CP_ENDPOINTS - 1), keepUrl];
    }
    return out.slice(0, MAX_CP_ENDPOINTS);
  }

  #persist(): Promise<void> {
    const file = this.#file;
    if (file === null) return this.#writing;
    const text = JSON.stringify({ control_planes: this.#list }, null, 2) + "\n";
    this.#writing = this.#writing.then(() => writeFileAtomic(file, text, 0o600)).catch((e) => {
      this.#log.warn("control planes: cannot persist the list", { file, err: errorMessage(e) });
    });
    return this.#writing;
  }
}
