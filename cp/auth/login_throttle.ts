/**
 * Login throttling (brute-force protection): failed logins are counted per email and per
 * source address in a sliding window; once a key has `maxFailures` failures inside
 * `windowSeconds`, further attempts for it are refused with 429 `too_many_requests` and a
 * `Retry-After` of the seconds until its oldest failure leaves the window — before the
 * password is even checked, so a locked-out guess costs nothing and tells nothing. A
 * successful login clears its email's failures (not its address's: one address may try many
 * accounts). Per replica, in memory, at most {@link MAX_THROTTLE_KEYS} keys (the oldest are
 * forgotten first).
 *
 * @module
 */

/** Keys tracked at most (emails and addresses together). */
export const MAX_THROTTLE_KEYS = 10_000;

/** One limit: at most `maxFailures` failed logins within `windowSeconds` (seconds). */
export interface ThrottleRule {
  maxFailures: number;
  windowSeconds: number;
}

/** Options of {@link LoginThrottle}. */
export interface LoginThrottleOptions {
  perEmail: ThrottleRule;
  perAddress: ThrottleRule;
  /** Clock, ms epoch (tests inject one). */
  now?: () => number;
}

/** The failed-login counters of one control-plane replica (see the module doc). */
export class LoginThrottle {
  #fails = new Map<string, number[]>();
  #o: LoginThrottleOptions;
  #now: () => number;

  constructor(o: LoginThrottleOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /**
   * Seconds to wait before `email` may try again from `address` (0: go ahead); the larger of
   * the two keys' waits, rounded up. `email` null: the address alone (OIDC sign-in).
   */
  retryAfter(email: string | null, address: string): number {
    const now = this.#now();
    const wait = (key: string, rule: ThrottleRule) => {
      const recent = this.#recent(key, rule, now);
      if (recent.length < rule.maxFailures) return 0;
      return Math.max(1, Math.ceil((recent[0] + rule.windowSeconds * 1000 - now) / 1000));
    };
    return Math.max(
      email === null ? 0 : wait(emailKey(email), this.#o.perEmail),
      wait(addressKey(address), this.#o.perAddress),
    );
  }

  /** Records a failed login of `email` (null: none known) from `address`. */
  failure(email: string | null, address: string): void {
    const now = this.#now();
    if (email !== null) this.#push(emailKey(email), this.#o.perEmail, now);
    this.#push(addressKey(address), this.#o.perAddress, now);
  }

  /** A successful login: forgets `email`'s failures. */
  success(email: string): void {
    this.#fails.delete(emailKey(email));
  }

  #recent(key: string, rule: ThrottleRule, now: number): number[] {
    const list = this.#fails.get(key);
    if (!list) return [];
    const from = now - rule.windowSeconds * 1000;
    const recent = list.filter((t) => t > from);
    if (recent.length) this.#fails.set(key, recent);
    else this.#fails.delete(key);
    return recent;
  }

  #push(key: string, rule: ThrottleRule, now: number): void {
    const recent = this.#recent(key, rule, now);
    recent.push(now);
    // Only the newest maxFailures matter for the decision.
    this.#fails.delete(key); // re-insert: the map's order is least recently failed first
    this.#fails.set(key, recent.slice(-rule.maxFailures));
    while (this.#fails.size > MAX_THROTTLE_KEYS) {
      this.#fails.delete(this.#fails.keys().next().value!);
    }
  }
}

const emailKey = (email: string) => `email:${email.toLowerCase()}`;
const addressKey = (address: string) => `addr:${address}`;
