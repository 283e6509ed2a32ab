/**
 * Single-flight with shared progress and reference-counted cancellation: concurrent calls
 * with one key share one run of the work (the image cache's "one download per image per
 * pool", agent/images.ts).
 *
 * - The first call for a key starts the work; calls made while it runs join it and settle
 *   with its result or error. Once it settled, the next call starts a new run.
 * - Progress the work reports reaches every caller's `onProgress`; a caller that joins late
 *   gets the last report at once.
 * - Each caller may cancel with its own signal: it leaves (rejecting with its signal's
 *   reason) at once and the others go on. When the last caller leaves, the work's signal
 *   aborts (with that caller's reason), the run is forgotten (a later call starts afresh),
 *   and that last call rejects once the work has settled (its cleanup is done).
 *
 * @module
 */

/** What the work gets. */
export interface FlightContext<P> {
  /** Aborted when every caller has cancelled. */
  signal: AbortSignal;
  /** Reports progress to every caller still waiting. */
  progress: (p: P) => void;
}

/** Options of one {@link SingleFlight.run} call. */
export interface FlightCallOptions<P> {
  /** Leaves the flight (the call rejects with `signal.reason`). */
  signal?: AbortSignal;
  /** Receives the flight's progress reports. */
  onProgress?: (p: P) => void;
}

/** The outcome of one call. */
export interface FlightResult<T> {
  value: T;
  /** True for the call that started the run, false for those that joined it. */
  leader: boolean;
}

/** One run: its work (started at once), its callers and their progress listeners. */
class Flight<T, P> {
  readonly ctrl = new AbortController();
  readonly listeners = new Set<(p: P) => void>();
  readonly promise: Promise<T>;
  callers = 0;
  last: { p: P } | null = null;

  constructor(work: (ctx: FlightContext<P>) => Promise<T>) {
    const progress = (p: P) => {
      this.last = { p };
      for (const l of [...this.listeners]) l(p);
    };
    // Runs `work` synchronously up to its first await; a throw becomes a rejection.
    this.promise = (async () => await work({ signal: this.ctrl.signal, progress }))();
  }
}

/** Shares concurrent runs of keyed work. */
export class SingleFlight<T, P = never> {
  #flights = new Map<string, Flight<T, P>>();

  /** Keys with a run in progress (for tests and diagnostics). */
  get inFlight(): string[] {
    return [...this.#flights.keys()];
  }

  /**
   * Runs `work` for `key`, or joins the run already in progress for it.
   *
   * @throws the work's error (to every caller of the run); the caller's `signal.reason`
   *   when it cancels (at once, also when it aborted before the call)
   */
  run(
    key: string,
    work: (ctx: FlightContext<P>) => Promise<T>,
    opts: FlightCallOptions<P> = {},
  ): Promise<FlightResult<T>> {
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason);
    let flight = this.#flights.get(key);
    const leader = !flight;
    if (!flight) {
      const f = new Flight<T, P>(work);
      const forget = () => {
        if (this.#flights.get(key) === f) this.#flights.delete(key);
      };
      f.promise.then(forget, forget);
      this.#flights.set(key, f);
      flight = f;
    }
    return this.#join(key, flight, leader, opts);
  }

  #join(
    key: string,
    f: Flight<T, P>,
    leader: boolean,
    opts: FlightCallOptions<P>,
  ): Promise<FlightResult<T>> {
    f.callers++;
    const listener = opts.onProgress;
    if (listener) {
      f.listeners.add(listener);
      if (f.last) listener(f.last.p);
    }
    return new Promise<FlightResult<T>>((resolve, reject) => {
      let left = false;
      const leave = () => {
        if (left) return;
        left = true;
        if (listener) f.listeners.delete(listener);
        opts.signal?.removeEventListener("abort", onAbort);
        f.callers--;
      };
      const onAbort = () => {
        leave();
        const reason = opts.signal!.reason;
        if (f.callers > 0) return reject(reason);
        // Nobody waits any more: stop the work (this call settles once it has wound down,
        // so it leaves nothing behind), and let the next call start afresh.
        if (this.#flights.get(key) === f) this.#flights.delete(key);
        f.ctrl.abort(reason);
        f.promise.then(() => reject(reason), () => reject(reason));
      };
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      f.promise.then(
        (value) => {
          if (left) return;
          leave();
          resolve({ value, leader });
        },
        (e) => {
          if (left) return;
          leave();
          reject(e);
        },
      );
    });
  }
}
