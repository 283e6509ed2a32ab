/**
 * One supervised etcd member per control-plane replica (issue 11: "Each control-plane replica
 * runs and supervises its own etcd member (the Debian `etcd-server` binary as a child process,
 * its data under the control plane's data dir, client and peer traffic over TLS with
 * certificates from the cluster CA)"; spec 001: the control plane "runs an embedded etcd
 * member").
 *
 * - Layout under `dataDir` (0700): `data/` is etcd's `--data-dir`; `etcd.log` is etcd's own
 *   log (zap JSON lines), rotated to `etcd.log.1` when it passes `logMaxBytes` (so at most
 *   twice that on disk). Warnings and errors from it are forwarded to our log as
 *   `etcd: <msg>`, each distinct message at most once per `forwardWindowMs`.
 * - TLS: one certificate (serverAuth + clientAuth) serves clients and peers, with
 *   `--client-cert-auth` and `--peer-client-cert-auth`, so only holders of a certificate from
 *   the CA in `tls.caFile` talk to etcd. That CA must issue to control-plane replicas only:
 *   whoever holds one of its certificates reads and writes the whole store (CA key, signing
 *   keys). Agents hold cluster-CA certificates, so give etcd a CA of its own (see the test):
 *   etcd 3.4 cannot narrow a CA's certificates for clients while its JSON gateway, which the
 *   store's client uses, works (with `--client-cert-allowed-hostname` every gateway call
 *   fails: the gateway's own connection to the member is refused). Only file paths are
 *   handed to etcd or logged, never key bytes.
 * - `start()` resolves once the member answers `GET /health` with `{"health":"true"}` over
 *   mutual TLS (a learner answers it too once it has joined); it rejects with the tail of
 *   etcd's stderr when etcd exits first or `startTimeoutMs` passes.
 * - After a successful start an unexpected exit is logged and etcd restarted after a capped
 *   exponential backoff ({@link restartDelayMs}: never a hot loop), the backoff starting over
 *   once a run has lasted `stableAfterMs`. A member etcd reports as removed from the cluster
 *   is not restarted (state `removed`): its data dir cannot rejoin; `otherix-api join` must.
 * - `stop()` sends SIGTERM, waits `stopGraceMs`, then SIGKILL, and resolves once etcd is gone.
 *
 * @example
 * ```ts
 * const member = new EtcdMember({
 *   name: "cp-1", dataDir: `${dataDir}/etcd`,
 *   clientUrl: "https://10.0.0.5:2379", peerUrl: "https://10.0.0.5:2380",
 *   tls: { caFile: etcdCaFile, certFile, keyFile },
 *   initialCluster: "cp-1=https://10.0.0.5:2380", initialClusterState: "new", log,
 * });
 * await member.start(); // then open the etcd store on member.clientUrl
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { ApiError } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";

/** The member's TLS files (PEM), all readable by the control plane's user. */
export interface EtcdTlsFiles {
  /** The CA trusted for clients and peers (one that issues to replicas only: module doc). */
  caFile: string;
  /**
   * This replica's certificate (serverAuth + clientAuth, SANs covering the hosts of its
   * client and peer URLs), used for client and peer TLS; etcd re-reads it on each handshake.
   */
  certFile: string;
  /** Its private key (PKCS#8). */
  keyFile: string;
}

/** Timings of {@link EtcdMember}, all in milliseconds. */
export interface EtcdMemberTimings {
  /** etcd `--heartbeat-interval` (default 100, etcd's). */
  heartbeatMs?: number;
  /** etcd `--election-timeout` (default 1000, etcd's; at least 5 × heartbeat). */
  electionMs?: number;
  /** How long `start()` waits for health (default 60 000). */
  startTimeoutMs?: number;
  /** Health poll period while waiting (default 200). */
  probeIntervalMs?: number;
  /** One health request's timeout (default 2 000). */
  probeTimeoutMs?: number;
  /** SIGTERM → SIGKILL grace in `stop()` (default 10 000). */
  stopGraceMs?: number;
  /** First restart delay after an unexpected exit (default 500). */
  restartMinMs?: number;
  /** Longest restart delay (default 30 000). */
  restartMaxMs?: number;
  /** A run at least this long resets the restart backoff (default 60 000). */
  stableAfterMs?: number;
  /** Each distinct etcd warning is forwarded to our log at most once per window (30 000). */
  forwardWindowMs?: number;
}

/** Options of {@link EtcdMember}. */
export interface EtcdMemberOptions {
  /** The etcd executable (default `etcd`, looked up on PATH; Debian: `/usr/bin/etcd`). */
  binary?: string;
  /** Member name (`--name`): letters, digits, `.`, `_`, `-` (it appears in initialCluster). */
  name: string;
  /** The member's directory (e.g. `<data_dir>/etcd`); created 0700. */
  dataDir: string;
  /** Advertised client URL (`https://host:port`) other replicas and this one use. */
  clientUrl: string;
  /** Advertised peer URL (`https://host:port`). */
  peerUrl: string;
  /** Client listen URL (default {@link listenUrlFor}(clientUrl)). */
  listenClientUrl?: string;
  /** Peer listen URL (default {@link listenUrlFor}(peerUrl)). */
  listenPeerUrl?: string;
  tls: EtcdTlsFiles;
  /** `--initial-cluster`: `name=peerUrl,…`, this member included (used on first start only). */
  initialCluster: string;
  /** `new` to bootstrap a cluster, `existing` to join one (after a member add). */
  initialClusterState: "new" | "existing";
  log: Logger;
  timings?: EtcdMemberTimings;
  /** Rotate `etcd.log` past this many bytes (default 10 MiB). */
  logMaxBytes?: number;
  /** More etcd flags (`--flag=value`), e.g. auto-compaction. */
  extraArgs?: string[];
}

/** Where an {@link EtcdMember} is in its life. */
export type EtcdMemberState =
  | "stopped"
  | "starting"
  | "running"
  | "restarting"
  | "stopping"
  | "removed";

const DEFAULT_TIMINGS: Required<EtcdMemberTimings> = {
  heartbeatMs: 100,
  electionMs: 1000,
  startTimeoutMs: 60_000,
  probeIntervalMs: 200,
  probeTimeoutMs: 2_000,
  stopGraceMs: 10_000,
  restartMinMs: 500,
  restartMaxMs: 30_000,
  stableAfterMs: 60_000,
  forwardWindowMs: 30_000,
};

/** Lines of etcd's stderr kept for error messages. */
const TAIL_LINES = 20;
/** What etcd 3.4 logs when this member was removed from the cluster (etcdserver). */
const REMOVED_RE = /permanently removed from the cluster|has already been removed/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * The restart delay after `failures` consecutive unexpected exits (1 = the first), ms:
 * `minMs · 2^(failures-1)`, at most `maxMs`; never 0, so a crashing etcd is no hot loop.
 */
export function restartDelayMs(failures: number, minMs: number, maxMs: number): number {
  const n = Math.max(1, Math.floor(failures));
  return Math.max(1, Math.min(maxMs, minMs * 2 ** Math.min(n - 1, 30)));
}

/**
 * Parses an advertised etcd URL: `https://host:port` with no path, query or credentials.
 *
 * @throws ApiError `validation_failed` naming `what` otherwise
 */
export function parseMemberUrl(url: string, what: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ApiError("validation_failed", `${what}: ${JSON.stringify(url)} is not a URL`);
  }
  if (u.protocol !== "https:" || !u.port || (u.pathname !== "/" && u.pathname !== "")) {
    throw new ApiError(
      "validation_failed",
      `${what}: ${JSON.stringify(url)} must be https://host:port (etcd traffic is TLS only)`,
    );
  }
  if (u.username || u.password || u.search || u.hash) {
    throw new ApiError("validation_failed", `${what}: ${JSON.stringify(url)} has extra parts`);
  }
  return u;
}

/**
 * The listen URL for an advertised URL: the same when its host is an IP address or
 * `localhost` (etcd binds only to those), else the wildcard `https://0.0.0.0:<port>`.
 */
export function listenUrlFor(advertised: string): string {
  const u = parseMemberUrl(advertised, "url");
  const host = u.hostname;
  const isIp = /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.startsWith("[");
  return isIp || host === "localhost" ? `https://${u.host}` : `https://0.0.0.0:${u.port}`;
}

/**
 * Parses `--initial-cluster` (`name=peerUrl,…`) into pairs.
 *
 * @throws ApiError `validation_failed` on an entry without `name=`
 */
export function parseInitialCluster(s: string): { name: string; peerUrl: string }[] {
  return s.split(",").filter((e) => e.trim()).map((entry) => {
    const i = entry.indexOf("=");
    if (i <= 0) {
      throw new ApiError(
        "validation_failed",
        `initialCluster: entry ${JSON.stringify(entry)} is not name=peerUrl`,
      );
    }
    return { name: entry.slice(0, i).trim(), peerUrl: entry.slice(i + 1).trim() };
  });
}

/** Resolved options: every default filled in, validated. */
type Resolved = Omit<Required<EtcdMemberOptions>, "timings"> & {
  timings: Required<EtcdMemberTimings>;
};

function resolve(opts: EtcdMemberOptions): Resolved {
  const bad = (m: string) => new ApiError("validation_failed", `etcd member: ${m}`);
  if (!NAME_RE.test(opts.name)) {
    throw bad(`name ${JSON.stringify(opts.name)}: use letters, digits, '.', '_', '-'`);
  }
  parseMemberUrl(opts.clientUrl, "clientUrl");
  parseMemberUrl(opts.peerUrl, "peerUrl");
  const timings = { ...DEFAULT_TIMINGS };
  for (const [k, v] of Object.entries(opts.timings ?? {})) {
    if (v !== undefined) timings[k as keyof EtcdMemberTimings] = v;
  }
  if (timings.electionMs < 5 * timings.heartbeatMs) {
    throw bad(`election timeout ${timings.electionMs} ms must be >= 5 x heartbeat`);
  }
  const self = parseInitialCluster(opts.initialCluster).find((e) => e.name === opts.name);
  if (!self || self.peerUrl !== opts.peerUrl) {
    throw bad(
      `initialCluster ${JSON.stringify(opts.initialCluster)} must contain ` +
        `${opts.name}=${opts.peerUrl}`,
    );
  }
  return {
    ...opts,
    binary: opts.binary ?? "etcd",
    listenClientUrl: opts.listenClientUrl ?? listenUrlFor(opts.clientUrl),
    listenPeerUrl: opts.listenPeerUrl ?? listenUrlFor(opts.peerUrl),
    logMaxBytes: opts.logMaxBytes ?? 10 * 1024 * 1024,
    extraArgs: opts.extraArgs ?? [],
    timings,
  };
}

/** The etcd command line for `opts` (without the binary); paths only, never key bytes. */
export function etcdArgs(opts: EtcdMemberOptions): string[] {
  const o = resolve(opts);
  const t = o.timings;
  const args = [
    `--name=${o.name}`,
    `--data-dir=${join(o.dataDir, "data")}`,
    `--listen-client-urls=${o.listenClientUrl}`,
    `--advertise-client-urls=${o.clientUrl}`,
    `--listen-peer-urls=${o.listenPeerUrl}`,
    `--initial-advertise-peer-urls=${o.peerUrl}`,
    `--initial-cluster=${o.initialCluster}`,
    `--initial-cluster-state=${o.initialClusterState}`,
    "--initial-cluster-token=otherix",
    `--cert-file=${o.tls.certFile}`,
    `--key-file=${o.tls.keyFile}`,
    `--trusted-ca-file=${o.tls.caFile}`,
    "--client-cert-auth",
    `--peer-cert-file=${o.tls.certFile}`,
    `--peer-key-file=${o.tls.keyFile}`,
    `--peer-trusted-ca-file=${o.tls.caFile}`,
    "--peer-client-cert-auth",
    `--heartbeat-interval=${t.heartbeatMs}`,
    `--election-timeout=${t.electionMs}`,
    "--logger=zap",
    "--log-outputs=stderr",
    "--log-level=info",
  ];
  return [...args, ...o.extraArgs];
}

/** A log line of etcd's, decided on by {@link EtcdLogForwarder}. */
export interface ForwardedLine {
  level: "warn" | "error";
  msg: string;
  fields: Record<string, unknown>;
}

const ETCD_WARN = new Set(["warn"]);
const ETCD_ERROR = new Set(["error", "dpanic", "panic", "fatal"]);
const DROP_FIELDS = new Set(["level", "ts", "caller", "msg", "logger", "stacktrace"]);
/**
 * etcd warnings that say nothing to an operator here (they stay in etcd.log): auth is off, so
 * its token kind does not matter.
 */
const BENIGN = new Set(["simple token is not cryptographically signed"]);

/**
 * Decides which of etcd's stderr lines reach our log: zap JSON lines at warn and above (as
 * `etcd: <msg>` with etcd's fields; a few benign ones excepted), and lines that are not JSON
 * (a Go panic, a flag error, Go's own logger) as warnings. Each distinct message (Go's
 * date-time prefix aside) passes at most once per `windowMs`; the next one that passes
 * carries `suppressed: <count>` of those held back in between.
 */
export class EtcdLogForwarder {
  #windowMs: number;
  #now: () => number;
  #seen = new Map<string, { at: number; suppressed: number }>();

  /** `now`: a clock in ms (default `Date.now`). */
  constructor(windowMs: number, now: () => number = Date.now) {
    this.#windowMs = windowMs;
    this.#now = now;
  }

  /** What to log for one stderr line, or null for nothing. */
  line(text: string): ForwardedLine | null {
    const trimmed = text.trim();
    if (!trimmed) return null;
    let rec: Record<string, unknown> | null = null;
    if (trimmed.startsWith("{")) {
      try {
        rec = JSON.parse(trimmed);
      } catch { /* not JSON after all */ }
    }
    let out: ForwardedLine;
    if (rec) {
      const lvl = String(rec.level ?? "");
      if (!ETCD_WARN.has(lvl) && !ETCD_ERROR.has(lvl)) return null;
      if (BENIGN.has(String(rec.msg))) return null;
      const fields: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(rec)) if (!DROP_FIELDS.has(k)) fields[k] = v;
      out = { level: ETCD_ERROR.has(lvl) ? "error" : "warn", msg: String(rec.msg ?? ""), fields };
    } else {
      out = { level: "warn", msg: trimmed.slice(0, 500), fields: {} };
    }
    const now = this.#now();
    // Go's log prefixes a date and time: the same message again is the same key.
    const key = out.msg.replace(/\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d(\.\d+)?/g, "");
    const seen = this.#seen.get(key);
    if (seen && now - seen.at < this.#windowMs) {
      seen.suppressed++;
      return null;
    }
    if (seen?.suppressed) out.fields.suppressed = seen.suppressed;
    this.#seen.set(key, { at: now, suppressed: 0 });
    if (this.#seen.size > 1000) this.#seen.clear(); // bounded memory
    return out;
  }
}

/** An append-only file rotated to `<path>.1` when it passes `maxBytes` (mode 0600). */
class RotatingFile {
  #path: string;
  #maxBytes: number;
  #file: Deno.FsFile | null = null;
  #size = 0;
  #enc = new TextEncoder();

  constructor(path: string, maxBytes: number) {
    this.#path = path;
    this.#maxBytes = maxBytes;
  }

  async #open(): Promise<Deno.FsFile> {
    const f = await Deno.open(this.#path, { append: true, create: true, mode: 0o600 });
    await Deno.chmod(this.#path, 0o600);
    this.#size = (await f.stat()).size;
    return f;
  }

  async write(text: string): Promise<void> {
    const bytes = this.#enc.encode(text);
    this.#file ??= await this.#open();
    if (this.#size > 0 && this.#size + bytes.length > this.#maxBytes) {
      this.#file.close();
      await Deno.rename(this.#path, `${this.#path}.1`);
      this.#file = await this.#open();
    }
    let off = 0;
    while (off < bytes.length) off += await this.#file.write(bytes.subarray(off));
    this.#size += bytes.length;
  }

  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}

/** One running etcd child with its stderr pump. */
interface Run {
  child: Deno.ChildProcess;
  startedAt: number;
  /** Resolves when the process has exited and its stderr is fully read. */
  done: Promise<Deno.CommandStatus>;
}

/** A supervised etcd member (see the module doc). */
export class EtcdMember {
  #o: Resolved;
  #log: Logger;
  #state: EtcdMemberState = "stopped";
  #run: Run | null = null;
  #failures = 0;
  #restarts = 0;
  #restartTimer: ReturnType<typeof setTimeout> | null = null;
  #tail: string[] = [];
  #logFile: RotatingFile;
  #forwarder: EtcdLogForwarder;
  #http: Deno.HttpClient | null = null;
  #lastProbeError = "";

  /** @throws ApiError `validation_failed` for a bad name, URL or initial cluster */
  constructor(opts: EtcdMemberOptions) {
    this.#o = resolve(opts);
    this.#log = opts.log.with({ etcd_member: opts.name });
    this.#logFile = new RotatingFile(this.logPath, this.#o.logMaxBytes);
    this.#forwarder = new EtcdLogForwarder(this.#o.timings.forwardWindowMs);
  }

  /** The member name. */
  get name(): string {
    return this.#o.name;
  }
  /** The advertised client URL (what the store and admin clients connect to). */
  get clientUrl(): string {
    return this.#o.clientUrl;
  }
  /** The advertised peer URL. */
  get peerUrl(): string {
    return this.#o.peerUrl;
  }
  /** etcd's `--data-dir` (`<dataDir>/data`). */
  get etcdDataDir(): string {
    return join(this.#o.dataDir, "data");
  }
  /** etcd's own log file (`<dataDir>/etcd.log`; previous one `etcd.log.1`). */
  get logPath(): string {
    return join(this.#o.dataDir, "etcd.log");
  }
  /** Where the member is in its life. */
  get state(): EtcdMemberState {
    return this.#state;
  }
  /** The running etcd's process id (null when none runs). */
  get pid(): number | null {
    return this.#run?.child.pid ?? null;
  }
  /** How many times the supervisor restarted etcd since `start()`. */
  get restarts(): number {
    return this.#restarts;
  }
  /** The last lines etcd wrote to stderr (for error messages). */
  get stderrTail(): string[] {
    return [...this.#tail];
  }

  /**
   * Starts etcd and resolves once it answers health over mutual TLS.
   *
   * @throws Error when etcd cannot be spawned, exits during start, or is not healthy within
   *   `startTimeoutMs` (the message ends with etcd's last stderr lines); nothing keeps running
   */
  async start(): Promise<void> {
    if (this.#state !== "stopped") throw new Error(`etcd member ${this.name}: already started`);
    this.#state = "starting";
    this.#failures = 0;
    this.#restarts = 0;
    try {
      await Deno.mkdir(this.#o.dataDir, { recursive: true, mode: 0o700 });
      await Deno.chmod(this.#o.dataDir, 0o700);
      this.#http = Deno.createHttpClient({
        caCerts: [await Deno.readTextFile(this.#o.tls.caFile)],
        cert: await Deno.readTextFile(this.#o.tls.certFile),
        key: await Deno.readTextFile(this.#o.tls.keyFile),
      });
      const run = this.#spawn();
      const healthy = await this.#awaitHealthy(run, this.#o.timings.startTimeoutMs);
      if (healthy !== "healthy") {
        const what = healthy === "exited" ? "exited during start" : "did not become healthy";
        const ms = Math.round(performance.now() - run.startedAt);
        const probe = this.#lastProbeError ? ` (last health check: ${this.#lastProbeError})` : "";
        throw new Error(
          `etcd member ${this.name} ${what} after ${ms} ms${probe}; etcd's last lines:\n` +
            this.#tail.join("\n"),
        );
      }
    } catch (e) {
      await this.#halt();
      this.#closeResources();
      this.#state = "stopped";
      throw e;
    }
    this.#state = "running";
    this.#log.info("etcd member started", {
      pid: this.pid,
      client_url: this.clientUrl,
      peer_url: this.peerUrl,
      initial_cluster_state: this.#o.initialClusterState,
    });
  }

  /** Stops etcd: SIGTERM, `stopGraceMs`, then SIGKILL. Idempotent. */
  async stop(): Promise<void> {
    if (this.#state === "stopped") return;
    this.#state = "stopping";
    if (this.#restartTimer !== null) clearTimeout(this.#restartTimer);
    this.#restartTimer = null;
    await this.#halt();
    this.#closeResources();
    this.#state = "stopped";
    this.#log.info("etcd member stopped");
  }

  /** One health check: true when `GET <clientUrl>/health` answers `{"health":"true"}`. */
  async healthy(): Promise<boolean> {
    if (!this.#http) return false;
    try {
      const res = await fetch(`${this.#o.clientUrl}/health`, {
        client: this.#http,
        signal: AbortSignal.timeout(this.#o.timings.probeTimeoutMs),
      });
      const body = await res.json() as { health?: string };
      this.#lastProbeError = body.health === "true" ? "" : `health ${JSON.stringify(body)}`;
      return body.health === "true";
    } catch (e) {
      this.#lastProbeError = (e as Error).message;
      return false;
    }
  }

  #closeResources(): void {
    this.#http?.close();
    this.#http = null;
    this.#logFile.close();
  }

  /** SIGTERM → grace → SIGKILL on the current run; resolves when it is gone. */
  async #halt(): Promise<void> {
    const run = this.#run;
    if (!run) return;
    const signal = (s: Deno.Signal) => {
      try {
        run.child.kill(s);
      } catch { /* already gone */ }
    };
    signal("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const graceOver = new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), this.#o.timings.stopGraceMs);
    });
    if (await Promise.race([run.done, graceOver]) === "timeout") {
      this.#log.warn("etcd did not exit on SIGTERM; killing it", {
        grace_ms: this.#o.timings.stopGraceMs,
      });
      signal("SIGKILL");
    }
    clearTimeout(timer);
    await run.done;
    this.#run = null;
  }

  /** Spawns etcd and wires its stderr and exit. @throws when the binary cannot be run */
  #spawn(): Run {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(this.#o.binary, {
        args: etcdArgs(this.#o),
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        // etcd reads ETCD_* variables as flags: none of the caller's may change its setup.
        clearEnv: true,
      }).spawn();
    } catch (e) {
      const hint = e instanceof Deno.errors.NotFound
        ? " (install etcd: apt-get install etcd-server)"
        : "";
      throw new Error(`cannot run etcd ${JSON.stringify(this.#o.binary)}: ${e}${hint}`);
    }
    this.#tail = [];
    const pump = this.#pump(child.stderr);
    const done = child.status.then(async (s) => {
      await pump;
      return s;
    });
    const run: Run = { child, startedAt: performance.now(), done };
    this.#run = run;
    void done.then((status) => this.#onExit(run, status));
    return run;
  }

  /** Reads etcd's stderr: log file, tail, forwarding. */
  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    let buf = "";
    const onLine = async (line: string) => {
      this.#tail.push(line.length > 1000 ? line.slice(0, 1000) + "…" : line);
      if (this.#tail.length > TAIL_LINES) this.#tail.shift();
      try {
        await this.#logFile.write(line + "\n");
      } catch (e) {
        this.#log.debug("etcd log file write failed", { path: this.logPath, err: e });
      }
      const fwd = this.#forwarder.line(line);
      // While we stop it, etcd's warnings are about its own shutdown (its gateway losing
      // the member): etcd.log has them.
      if (fwd && !(fwd.level === "warn" && this.#state === "stopping")) {
        this.#log[fwd.level](`etcd: ${fwd.msg}`, fwd.fields);
      }
    };
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          await onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
      if (buf) await onLine(buf);
    } catch (e) {
      this.#log.debug("etcd stderr read failed", { err: e });
    }
  }

  /** Waits until healthy, the run exits, or `timeoutMs` passes. */
  async #awaitHealthy(run: Run, timeoutMs: number): Promise<"healthy" | "exited" | "timeout"> {
    let exited = false;
    void run.done.then(() => (exited = true));
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      if (exited || this.#run !== run) return "exited";
      if (await this.healthy()) return "healthy";
      if (exited) return "exited";
      await new Promise((r) => setTimeout(r, this.#o.timings.probeIntervalMs));
    }
    return "timeout";
  }

  #onExit(run: Run, status: Deno.CommandStatus): void {
    if (this.#run !== run) return;
    // During start() and stop() the caller handles the exit.
    if (this.#state !== "running" && this.#state !== "restarting") return;
    this.#run = null;
    const exit = { code: status.code, signal: status.signal, pid: run.child.pid };
    if (this.#tail.some((l) => REMOVED_RE.test(l))) {
      this.#state = "removed";
      this.#log.error(
        "etcd member was removed from the cluster; not restarting it (its data cannot rejoin: " +
          "join the cluster again with otherix-api join)",
        exit,
      );
      return;
    }
    const ranMs = performance.now() - run.startedAt;
    this.#failures = ranMs >= this.#o.timings.stableAfterMs ? 1 : this.#failures + 1;
    const delay = restartDelayMs(
      this.#failures,
      this.#o.timings.restartMinMs,
      this.#o.timings.restartMaxMs,
    );
    this.#state = "restarting";
    this.#log.warn("etcd exited unexpectedly; restarting it", {
      ...exit,
      ran_ms: Math.round(ranMs),
      restart_in_ms: delay,
      consecutive_failures: this.#failures,
      last_line: this.#tail.at(-1),
    });
    this.#restartTimer = setTimeout(() => this.#restart(), delay);
  }

  #restart(): void {
    this.#restartTimer = null;
    if (this.#state !== "restarting") return;
    let run: Run;
    try {
      run = this.#spawn();
    } catch (e) {
      this.#failures++;
      const delay = restartDelayMs(
        this.#failures,
        this.#o.timings.restartMinMs,
        this.#o.timings.restartMaxMs,
      );
      this.#log.error("etcd restart failed", { err: e, restart_in_ms: delay });
      this.#restartTimer = setTimeout(() => this.#restart(), delay);
      return;
    }
    this.#restarts++;
    void (async () => {
      const outcome = await this.#awaitHealthy(run, this.#o.timings.startTimeoutMs);
      if (this.#run !== run || this.#state !== "restarting") return;
      if (outcome === "healthy") {
        this.#state = "running";
        this.#log.info("etcd member restarted and healthy", {
          pid: run.child.pid,
          restarts: this.#restarts,
        });
      } else if (outcome === "timeout") {
        // Running but unhealthy (e.g. no quorum): not a crash; keep it and say so.
        this.#state = "running";
        this.#log.warn("etcd member restarted but not healthy yet", {
          pid: run.child.pid,
          last_health_check: this.#lastProbeError,
        });
      }
    })();
  }
}
