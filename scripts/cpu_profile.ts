/**
 * CPU profiles of a Deno process started with `--inspect=<host:port>`, through the V8
 * inspector protocol (the Chrome DevTools Protocol `Profiler` domain): start, stop, and a
 * bottom-up summary of self time per function. Used by `deno task bench --profile DIR`.
 *
 * The `.cpuprofile` files it writes open in Chrome DevTools (Performance panel → load) or
 * https://www.speedscope.app.
 *
 * @example
 * ```ts
 * const prof = await CpuProfiler.connect("127.0.0.1:9339");
 * await prof.start();
 * // … load …
 * const profile = await prof.stop();
 * console.log(summarize(profile, 15));
 * ```
 *
 * @module
 */

/** A V8 CPU profile (`Profiler.Profile`). */
export interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A connection to one process's inspector. */
export class CpuProfiler {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, (v: unknown) => void>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const msg = JSON.parse(String(e.data));
      const done = msg.id !== undefined ? this.#pending.get(msg.id) : undefined;
      if (done) {
        this.#pending.delete(msg.id);
        done(msg.error ? new Error(JSON.stringify(msg.error)) : msg.result);
      }
    };
  }

  /**
   * Connects to the inspector listening on `hostPort` (the first target).
   *
   * @throws Error when no inspector answers there
   */
  static async connect(hostPort: string): Promise<CpuProfiler> {
    const targets = await (await fetch(`http://${hostPort}/json/list`)).json();
    const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`inspector at ${hostPort}: connection failed`));
    });
    const p = new CpuProfiler(ws);
    await p.#send("Profiler.enable");
    await p.#send("Profiler.setSamplingInterval", { interval: 500 }); // µs
    return p;
  }

  #send(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, (v) => v instanceof Error ? reject(v) : resolve(v));
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Starts sampling. */
  async start(): Promise<void> {
    await this.#send("Profiler.start");
  }

  /** Stops sampling and returns the profile. */
  async stop(): Promise<CpuProfile> {
    const r = await this.#send("Profiler.stop") as { profile: CpuProfile };
    return r.profile;
  }

  /** Closes the connection. */
  close(): void {
    this.#ws.close();
  }
}

/**
 * The `top` functions by self time, one line each: `self% total-ms function (file:line)`;
 * `(idle)` and `(program)` included, so the shares add up to the whole window.
 */
export function summarize(profile: CpuProfile, top = 20): string {
  const self = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? 0;
    self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + dt);
  }
  const byFn = new Map<string, number>();
  for (const n of profile.nodes) {
    const f = n.callFrame;
    const where = f.url
      ? ` (${f.url.replace(/^.*\/(node_modules|work)\//, "")}:${f.lineNumber + 1})`
      : "";
    const key = `${f.functionName || "(anonymous)"}${where}`;
    byFn.set(key, (byFn.get(key) ?? 0) + (self.get(n.id) ?? 0));
  }
  const total = [...byFn.values()].reduce((a, b) => a + b, 0) || 1;
  return [...byFn.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([k, us]) =>
      `${(us / total * 100).toFixed(1).padStart(5)}% ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`
    )
    .join("\n");
}
