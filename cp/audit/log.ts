/**
 * The audit log in the store: one entry per mutating call of the public API and per failed
 * login (cp/audit/middleware.ts), under `/audit/<inverted ms>-<random>` so a range reads
 * newest first. Bounded by `audit.max_entries` (the oldest go first) and `audit.max_age_days`:
 * {@link pruneAudit} runs at start and after every {@link PRUNE_EVERY} entries written.
 *
 * @module
 */
import type { AuditEntry } from "../../shared/api/audit.ts";
import { encodeCursor, type RangeResult, type Store } from "../store/store.ts";

/** Store prefix of audit entries. */
export const AUDIT_PREFIX = "/audit/";

/** Entries written between two prunes (per replica). */
export const PRUNE_EVERY = 100;

const MAX_MS = 9_999_999_999_999;

/** The key of an entry at `ms` (epoch ms): newer entries sort first. */
export function auditKey(ms: number, id: string): string {
  return `${AUDIT_PREFIX}${String(MAX_MS - ms).padStart(13, "0")}-${id}`;
}

/** Retention: entries kept at most, and their oldest age, days. */
export interface AuditRetention {
  maxEntries: number;
  maxAgeDays: number;
}

/** Deletes entries beyond `r.maxEntries` (oldest first) and older than `r.maxAgeDays`. */
export async function pruneAudit(store: Store, r: AuditRetention, now: Date): Promise<number> {
  let deleted = 0;
  const drop = async (cursor: string | null) => {
    while (cursor) {
      const page = await store.range(AUDIT_PREFIX, { cursor, limit: 500 });
      if (!page.kvs.length) break;
      await store.txn({
        compare: [],
        success: page.kvs.map((kv) => ({ type: "delete" as const, key: kv.key })),
      });
      deleted += page.kvs.length;
      cursor = page.nextCursor;
    }
  };
  // Older than the age bound: everything after the bound's key.
  const cutoff = now.getTime() - r.maxAgeDays * 24 * 3600 * 1000;
  await drop(encodeCursor(auditKey(cutoff, "~")));
  // Beyond the count bound: everything after the first maxEntries.
  let cursor: string | null = null;
  let seen = 0;
  while (seen < r.maxEntries) {
    const page: RangeResult = await store.range(AUDIT_PREFIX, {
      cursor,
      limit: Math.min(1000, r.maxEntries - seen),
    });
    seen += page.kvs.length;
    cursor = page.nextCursor;
    if (!cursor) return deleted;
  }
  await drop(cursor);
  return deleted;
}

/** Writes audit entries and keeps the log within its retention. */
export class AuditLog {
  #writes = 0;
  #pruning: Promise<unknown> | null = null;

  constructor(
    private store: Store,
    private retention: AuditRetention,
    private onError: (e: unknown) => void,
  ) {}

  /** Stores `entry` (never throws: a failure is reported to `onError`). */
  async record(entry: AuditEntry): Promise<void> {
    try {
      await this.store.put(auditKey(Date.parse(entry.at), entry.id), entry);
    } catch (e) {
      this.onError(e);
      return;
    }
    if (++this.#writes % PRUNE_EVERY === 0) this.prune(new Date(entry.at));
  }

  /** Prunes in the background (one prune at a time); resolves when it is done. */
  prune(now: Date): Promise<unknown> {
    this.#pruning ??= pruneAudit(this.store, this.retention, now)
      .catch(this.onError)
      .finally(() => (this.#pruning = null));
    return this.#pruning;
  }
}

const LOGS = new WeakMap<object, AuditLog>();

/**
 * The audit log of a control plane (one per context), with the retention of its config
 * (`audit.max_entries`, `audit.max_age_days`).
 */
export function auditLogFor(ctx: {
  store: Store;
  cfg: { audit?: { max_entries: number; max_age_days: number } };
  log: { warn(msg: string, fields?: Record<string, unknown>): void };
}): AuditLog {
  let log = LOGS.get(ctx);
  if (!log) {
    log = new AuditLog(
      ctx.store,
      {
        maxEntries: ctx.cfg.audit?.max_entries ?? 10_000,
        maxAgeDays: ctx.cfg.audit?.max_age_days ?? 90,
      },
      (e) => ctx.log.warn("audit log write failed", { err: String(e) }),
    );
    LOGS.set(ctx, log);
  }
  return log;
}
