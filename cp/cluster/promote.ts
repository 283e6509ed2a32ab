/**
 * The promote loop (issue 11: "a promote loop (~15 s) turns caught-up learners into voters";
 * spec 000: "the ~15s promote loop converts caught-up learners automatically").
 *
 * Every `intervalMs` (after the previous pass ends, so passes never overlap) it lists the
 * etcd members and asks etcd to promote each learner. etcd refuses a learner that has not
 * caught up with the leader; that is "not yet" (logged at debug), tried again next pass.
 * For each learner the loop keeps since when it has been waiting (the first pass of this
 * loop that saw it); one waiting longer than `stuckAfterMs` is reported once at warn level
 * with the troubleshooting reference's symptom, "Joiner registered as learner but never
 * becomes a voter", and {@link PromoteLoop.stuck} lists it for `GET /v1/cluster/members`.
 *
 * Running the loop on several replicas at once is safe: a learner another replica promoted
 * first is answered `conflict` (already a voter) and dropped. The decisions are pure
 * functions ({@link trackLearners}, {@link isStuck}, {@link stuckMessage}) over an injected
 * clock; the timers are injectable too, so tests need no sleeps.
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import { realTimers, type Timers } from "../controllers/workqueue.ts";
import type { EtcdMemberInfo, PromoteResult } from "./etcd_admin.ts";

/** The promote period, ms (spec 000: "the ~15s promote loop"). */
export const PROMOTE_INTERVAL_MS = 15_000;
/** A learner waiting longer than this is reported as stuck, ms (default: 8 passes). */
export const STUCK_AFTER_MS = 2 * 60_000;
/** The troubleshooting reference's symptom for a stuck learner (spec 000, verbatim). */
export const STUCK_SYMPTOM = "Joiner registered as learner but never becomes a voter";

/** The membership operations the loop needs (`EtcdAdmin` of ./etcd_admin.ts has them). */
export interface Membership {
  listMembers(): Promise<EtcdMemberInfo[]>;
  promote(id: string): Promise<PromoteResult>;
}

/** A learner waiting for promotion. */
export interface LearnerWait {
  /** Member id (16 hex digits). */
  id: string;
  /** Its name; empty until it has started. */
  name: string;
  peerUrls: string[];
  /** When this loop first saw it as a learner. */
  waitingSince: Date;
  /** Promotions tried so far. */
  attempts: number;
  /** Why the last try did not promote it; null before the first try. */
  lastReason: string | null;
}

/** What one pass did. */
export interface PromoteTick {
  /** Members promoted by this pass (now voters). */
  promoted: EtcdMemberInfo[];
  /** Learners still waiting after it. */
  waiting: LearnerWait[];
  /** Why the pass could not run (the member list was unreadable); null when it ran. */
  error: string | null;
}

/**
 * The learners to track after seeing `members` at `now`: learners already tracked keep
 * their `waitingSince` and counters (name and URLs refreshed: a learner gets its name once
 * started), new learners start waiting at `now`, members no longer learners are dropped.
 */
export function trackLearners(
  prev: ReadonlyMap<string, LearnerWait>,
  members: readonly EtcdMemberInfo[],
  now: Date,
): Map<string, LearnerWait> {
  const next = new Map<string, LearnerWait>();
  for (const m of members) {
    if (!m.isLearner) continue;
    const old = prev.get(m.id);
    next.set(m.id, {
      id: m.id,
      name: m.name,
      peerUrls: [...m.peerUrls],
      waitingSince: old?.waitingSince ?? now,
      attempts: old?.attempts ?? 0,
      lastReason: old?.lastReason ?? null,
    });
  }
  return next;
}

/** True when `w` has waited at least `stuckAfterMs` at `now`. */
export function isStuck(w: LearnerWait, now: Date, stuckAfterMs: number): boolean {
  return now.getTime() - w.waitingSince.getTime() >= stuckAfterMs;
}

/** The operator-facing report of a stuck learner (spec 000's symptom, cause and check). */
export function stuckMessage(w: LearnerWait, now: Date): string {
  const waited = Math.round((now.getTime() - w.waitingSince.getTime()) / 1000);
  const who = w.name ? `${w.name} (${w.id})` : `${w.id} (not started: ${w.peerUrls.join(",")})`;
  return `${STUCK_SYMPTOM}: etcd learner ${who} has waited ${waited} s; last try: ` +
    `${w.lastReason ?? "none yet"}. The learner has not caught up, or the promote loop ` +
    "cannot reach quorum: watch GET /v1/cluster/members and check the joiner's etcd log " +
    "(<data_dir>/etcd/etcd.log) for replication progress";
}

/** Options of {@link PromoteLoop}. */
export interface PromoteLoopOptions {
  membership: Membership;
  log: Logger;
  /** Pause between passes, ms (default {@link PROMOTE_INTERVAL_MS}). */
  intervalMs?: number;
  /** Report a learner waiting this long, ms (default {@link STUCK_AFTER_MS}). */
  stuckAfterMs?: number;
  /** Wall clock (default `new Date()`). */
  now?: () => Date;
  timers?: Timers;
}

/** The promote loop (see the module doc). */
export class PromoteLoop {
  #o: Required<PromoteLoopOptions>;
  #learners = new Map<string, LearnerWait>();
  #reportedStuck = new Set<string>();
  #timer: unknown = null;
  #running = false;
  #listFailing = false;
  #busy: Promise<unknown> = Promise.resolve();

  constructor(opts: PromoteLoopOptions) {
    this.#o = {
      intervalMs: PROMOTE_INTERVAL_MS,
      stuckAfterMs: STUCK_AFTER_MS,
      now: () => new Date(),
      timers: realTimers,
      ...opts,
    };
  }

  /** Runs a pass at once, then one every `intervalMs` after the previous ends. Idempotent. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    void this.tick().finally(() => this.#schedule());
  }

  /** Stops passing; resolves when a pass in flight has ended. Idempotent. */
  async stop(): Promise<void> {
    this.#running = false;
    this.#o.timers.clearTimeout(this.#timer);
    this.#timer = null;
    await this.#busy.catch(() => {});
  }

  /** Learners waiting, oldest first (a copy). */
  learners(): LearnerWait[] {
    return [...this.#learners.values()]
      .sort((a, b) => a.waitingSince.getTime() - b.waitingSince.getTime())
      .map((w) => ({ ...w, peerUrls: [...w.peerUrls] }));
  }

  /** Learners waiting at least `stuckAfterMs`, each with {@link stuckMessage}. */
  stuck(): (LearnerWait & { message: string })[] {
    const now = this.#o.now();
    return this.learners().filter((w) => isStuck(w, now, this.#o.stuckAfterMs))
      .map((w) => ({ ...w, message: stuckMessage(w, now) }));
  }

  /** One pass (serialized with the timer's passes). Never throws. */
  tick(): Promise<PromoteTick> {
    const p = this.#busy.then(() => this.#pass()).catch((e): PromoteTick => {
      this.#o.log.warn("promote loop: pass failed", { err: e });
      return { promoted: [], waiting: this.learners(), error: (e as Error).message };
    });
    this.#busy = p;
    return p;
  }

  #schedule(): void {
    if (!this.#running) return;
    this.#timer = this.#o.timers.setTimeout(() => {
      void this.tick().finally(() => this.#schedule());
    }, this.#o.intervalMs);
  }

  async #pass(): Promise<PromoteTick> {
    const { membership, log } = this.#o;
    let members: EtcdMemberInfo[];
    try {
      members = await membership.listMembers();
    } catch (e) {
      // Said once per outage, not every 15 s.
      log[this.#listFailing ? "debug" : "warn"]("promote loop: cannot list etcd members", {
        err: e,
      });
      this.#listFailing = true;
      return { promoted: [], waiting: this.learners(), error: (e as Error).message };
    }
    this.#listFailing = false;
    this.#learners = trackLearners(this.#learners, members, this.#o.now());
    const promoted: EtcdMemberInfo[] = [];
    for (const w of [...this.#learners.values()]) {
      w.attempts++;
      let res: PromoteResult;
      try {
        res = await membership.promote(w.id);
      } catch (e) {
        if (e instanceof ApiError && (e.code === "conflict" || e.code === "not_found")) {
          // Promoted (or removed) by someone else since the list: nothing left to do.
          log.debug("promote loop: learner no longer waiting", { member_id: w.id, err: e });
          this.#forget(w.id);
          continue;
        }
        res = { promoted: false, reason: (e as Error).message };
      }
      if (res.promoted) {
        const now = this.#o.now();
        log.info("etcd learner promoted to voter", {
          member_id: w.id,
          name: w.name,
          waited_ms: now.getTime() - w.waitingSince.getTime(),
          attempts: w.attempts,
        });
        const listed = members.find((m) => m.id === w.id)!;
        promoted.push({ ...listed, isLearner: false });
        this.#forget(w.id);
        continue;
      }
      w.lastReason = res.reason;
      log.debug("promote loop: learner not promoted yet", { member_id: w.id, reason: res.reason });
      const now = this.#o.now();
      if (isStuck(w, now, this.#o.stuckAfterMs) && !this.#reportedStuck.has(w.id)) {
        this.#reportedStuck.add(w.id);
        log.warn(stuckMessage(w, now), { member_id: w.id, name: w.name });
      }
    }
    for (const id of this.#reportedStuck) {
      if (!this.#learners.has(id)) this.#reportedStuck.delete(id);
    }
    return { promoted, waiting: this.learners(), error: null };
  }

  #forget(id: string): void {
    this.#learners.delete(id);
    this.#reportedStuck.delete(id);
  }
}
