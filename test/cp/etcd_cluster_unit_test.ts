/**
 * The decisions of the etcd member supervisor and the promote loop, with fakes and a manual
 * clock (the real-process behaviour is in etcd_member_test.ts): restart backoff, etcd log
 * forwarding, the etcd command line and its validation, learner tracking, and the promote
 * loop's passes (promote when caught up, "not yet" otherwise, stuck learners reported once
 * with spec 000's symptom, list failures said once).
 */
import { assert, assertEquals, assertMatch, assertThrows } from "../assert.ts";
import {
  etcdArgs,
  EtcdLogForwarder,
  type EtcdMemberOptions,
  listenUrlFor,
  parseInitialCluster,
  restartDelayMs,
} from "../../cp/cluster/etcd_member.ts";
import { decimalId, EtcdAdmin, type EtcdMemberInfo, hexId } from "../../cp/cluster/etcd_admin.ts";
import {
  isStuck,
  type LearnerWait,
  type Membership,
  PromoteLoop,
  STUCK_SYMPTOM,
  stuckMessage,
  trackLearners,
} from "../../cp/cluster/promote.ts";
import { ManualTimers } from "../manual_timers.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";

const codeOf = (fn: () => unknown) => (assertThrows(fn) as ApiError).code;

Deno.test("restart backoff doubles from the minimum, is capped, and is never zero", () => {
  assertEquals([1, 2, 3, 4, 5, 6, 7, 8].map((n) => restartDelayMs(n, 500, 30_000)), [
    500,
    1000,
    2000,
    4000,
    8000,
    16000,
    30000,
    30000,
  ]);
  assertEquals(restartDelayMs(0, 500, 30_000), 500);
  assertEquals(restartDelayMs(1000, 500, 30_000), 30_000);
  assertEquals(restartDelayMs(1, 0, 10), 1);
});

Deno.test("etcd log forwarding: warnings and errors once per window, the rest stays in the file", () => {
  let now = 0;
  const f = new EtcdLogForwarder(30_000, () => now);
  const zap = (level: string, msg: string, extra = {}) =>
    JSON.stringify({ level, ts: "t", caller: "c.go:1", msg, ...extra });
  assertEquals(f.line(zap("info", "ready to serve client requests")), null);
  assertEquals(f.line(zap("debug", "x")), null);
  assertEquals(f.line(""), null);
  assertEquals(f.line(zap("warn", "rejected connection", { "remote-addr": "127.0.0.1:1" })), {
    level: "warn",
    msg: "rejected connection",
    fields: { "remote-addr": "127.0.0.1:1" },
  });
  now = 1_000;
  assertEquals(f.line(zap("warn", "rejected connection")), null);
  assertEquals(f.line(zap("warn", "rejected connection")), null);
  assertEquals(f.line(zap("fatal", "listen failed"))?.level, "error");
  now = 31_000;
  assertEquals(f.line(zap("warn", "rejected connection"))?.fields, { suppressed: 2 });
  assertEquals(f.line(zap("warn", "simple token is not cryptographically signed")), null);
  // Go's logger stamps each line: the same message a second later is the same message.
  assert(f.line("WARNING: 2026/11/30 11:12:33 [core] grpc: reconnecting") !== null);
  assertEquals(f.line("WARNING: 2026/11/30 11:12:34 [core] grpc: reconnecting"), null);
  const raw = f.line("panic: runtime error: index out of range");
  assertEquals(raw, {
    level: "warn",
    msg: "panic: runtime error: index out of range",
    fields: {},
  });
});

const OPTS: EtcdMemberOptions = {
  name: "cp-1",
  dataDir: "/var/lib/otherix/etcd",
  clientUrl: "https://10.0.0.5:2379",
  peerUrl: "https://10.0.0.5:2380",
  tls: { caFile: "/p/ca.crt", certFile: "/p/cp.crt", keyFile: "/p/cp.key" },
  initialCluster: "cp-1=https://10.0.0.5:2380",
  initialClusterState: "new",
  log: createLogger("api", "error", () => {}),
};

Deno.test("etcd command line: TLS for clients and peers, client certificates required", () => {
  const args = etcdArgs(OPTS);
  for (
    const a of [
      "--name=cp-1",
      "--data-dir=/var/lib/otherix/etcd/data",
      "--listen-client-urls=https://10.0.0.5:2379",
      "--advertise-client-urls=https://10.0.0.5:2379",
      "--listen-peer-urls=https://10.0.0.5:2380",
      "--initial-advertise-peer-urls=https://10.0.0.5:2380",
      "--initial-cluster=cp-1=https://10.0.0.5:2380",
      "--initial-cluster-state=new",
      "--cert-file=/p/cp.crt",
      "--key-file=/p/cp.key",
      "--trusted-ca-file=/p/ca.crt",
      "--client-cert-auth",
      "--peer-cert-file=/p/cp.crt",
      "--peer-key-file=/p/cp.key",
      "--peer-trusted-ca-file=/p/ca.crt",
      "--peer-client-cert-auth",
      "--heartbeat-interval=100",
      "--election-timeout=1000",
      "--logger=zap",
      "--log-outputs=stderr",
    ]
  ) assert(args.includes(a), `missing ${a} in ${args.join(" ")}`);
  assertEquals(etcdArgs({ ...OPTS, extraArgs: ["--x=1"] }).at(-1), "--x=1");
  // A host name is not bindable: listen on the wildcard with the same port.
  assertEquals(listenUrlFor("https://cp1.lan:2379"), "https://0.0.0.0:2379");
  assertEquals(listenUrlFor("https://localhost:2379"), "https://localhost:2379");
  assertEquals(listenUrlFor("https://[::1]:2379"), "https://[::1]:2379");
  assertEquals(parseInitialCluster("a=https://h:1, b=https://h:2"), [
    { name: "a", peerUrl: "https://h:1" },
    { name: "b", peerUrl: "https://h:2" },
  ]);
});

Deno.test("etcd member options: bad input is validation_failed", () => {
  assertEquals(
    codeOf(() => etcdArgs({ ...OPTS, clientUrl: "http://10.0.0.5:2379" })),
    "validation_failed",
  );
  assertEquals(
    codeOf(() => etcdArgs({ ...OPTS, peerUrl: "https://10.0.0.5" })),
    "validation_failed",
  );
  assertEquals(codeOf(() => etcdArgs({ ...OPTS, peerUrl: "https://h:1/x" })), "validation_failed");
  assertEquals(codeOf(() => etcdArgs({ ...OPTS, name: "a,b" })), "validation_failed");
  assertEquals(
    codeOf(() => etcdArgs({ ...OPTS, initialCluster: "cp-2=https://h:1" })),
    "validation_failed",
  );
  assertEquals(
    codeOf(() => etcdArgs({ ...OPTS, initialCluster: "https://h:1" })),
    "validation_failed",
  );
  assertEquals(
    codeOf(() => etcdArgs({ ...OPTS, timings: { heartbeatMs: 100, electionMs: 300 } })),
    "validation_failed",
  );
});

Deno.test("etcd admin options: bad endpoints are validation_failed", () => {
  const tls = { caPem: "", certPem: "", keyPem: "" };
  assertEquals(codeOf(() => new EtcdAdmin({ endpoints: [], tls })), "validation_failed");
  assertEquals(
    codeOf(() => new EtcdAdmin({ endpoints: ["http://cp1:2379"], tls })),
    "validation_failed",
  );
});

Deno.test("member ids: etcd's uint64 as 16 hex digits, both ways", () => {
  assertEquals(hexId("1654818993570247861"), "16f7191b6752f4b5");
  assertEquals(hexId("1"), "0000000000000001");
  assertEquals(decimalId("16f7191b6752f4b5"), "1654818993570247861");
  assertEquals(decimalId(hexId("18446744073709551615")), "18446744073709551615");
  assertEquals(codeOf(() => decimalId("not-hex")), "validation_failed");
  assertEquals(codeOf(() => decimalId("12345678901234567")), "validation_failed");
});

const member = (id: string, isLearner: boolean, name = `m-${id}`): EtcdMemberInfo => ({
  id,
  name,
  peerUrls: [`https://h:${id}`],
  clientUrls: name ? [`https://h:1${id}`] : [],
  isLearner,
});

Deno.test("learner tracking keeps since-when across passes and drops promoted members", () => {
  const t0 = new Date("2026-01-01T00:00:00Z");
  const t1 = new Date(t0.getTime() + 15_000);
  let w = trackLearners(new Map(), [member("1", false), member("2", true, "")], t0);
  assertEquals([...w.keys()], ["2"]);
  assertEquals(w.get("2")!.waitingSince, t0);
  w.get("2")!.attempts = 3;
  w = trackLearners(w, [member("1", false), member("2", true), member("3", true)], t1);
  assertEquals(w.get("2")!.waitingSince, t0, "still waiting since it was first seen");
  assertEquals(w.get("2")!.attempts, 3);
  assertEquals(w.get("2")!.name, "m-2", "the name appears once the learner has started");
  assertEquals(w.get("3")!.waitingSince, t1);
  w = trackLearners(w, [member("1", false), member("2", false), member("3", true)], t1);
  assertEquals([...w.keys()], ["3"]);
  const wait: LearnerWait = { ...w.get("3")!, lastReason: "not caught up" };
  assert(!isStuck(wait, new Date(t1.getTime() + 119_999), 120_000));
  assert(isStuck(wait, new Date(t1.getTime() + 120_000), 120_000));
  const msg = stuckMessage(wait, new Date(t1.getTime() + 120_000));
  assert(msg.startsWith(STUCK_SYMPTOM));
  assertMatch(msg, /m-3 \(3\) has waited 120 s; last try: not caught up/);
  assertMatch(msg, /GET \/v1\/cluster\/members/);
});

/** A scripted cluster: members, and what promote answers per id. */
class FakeMembership implements Membership {
  members: EtcdMemberInfo[] = [];
  answers = new Map<string, "ready" | "not_ready" | "voter">();
  listError: Error | null = null;
  promoted: string[] = [];
  listMembers(): Promise<EtcdMemberInfo[]> {
    if (this.listError) return Promise.reject(this.listError);
    return Promise.resolve(this.members.map((m) => ({ ...m })));
  }
  promote(id: string) {
    const a = this.answers.get(id) ?? "not_ready";
    if (a === "voter") return Promise.reject(new ApiError("conflict", "already a voter"));
    if (a === "not_ready") {
      return Promise.resolve({ promoted: false as const, reason: "not caught up yet" });
    }
    this.promoted.push(id);
    this.members = this.members.map((m) => (m.id === id ? { ...m, isLearner: false } : m));
    return Promise.resolve({ promoted: true as const });
  }
}

Deno.test("promote loop: passes every interval, promotes caught-up learners, reports stuck ones once", async () => {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger("api", "debug", (l) => lines.push(JSON.parse(l)));
  const timers = new ManualTimers();
  let now = new Date("2026-01-01T00:00:00Z").getTime();
  const fake = new FakeMembership();
  fake.members = [member("a", false), member("b", true)];
  const loop = new PromoteLoop({
    membership: fake,
    log,
    intervalMs: 15_000,
    stuckAfterMs: 60_000,
    now: () => new Date(now),
    timers,
  });
  const pass = async (ms: number) => {
    now += ms;
    timers.advance(ms);
    await loop.tick(); // serialized after the timer's pass: both done when this resolves
  };

  loop.start();
  await loop.tick();
  assertEquals(loop.learners().map((w) => [w.id, w.attempts, w.lastReason]), [
    ["b", 2, "not caught up yet"],
  ]);
  assertEquals(timers.pending, 1, "the next pass is scheduled");
  await pass(15_000);
  assertEquals(loop.stuck(), []);
  await pass(45_000);
  const stuck = loop.stuck();
  assertEquals(stuck.map((s) => s.id), ["b"]);
  assert(stuck[0].message.startsWith(STUCK_SYMPTOM));
  const warned = () => lines.filter((l) => String(l.msg).startsWith(STUCK_SYMPTOM)).length;
  assertEquals(warned(), 1);
  await pass(15_000);
  assertEquals(warned(), 1, "reported once, not every pass");

  fake.answers.set("b", "ready");
  await pass(15_000);
  assertEquals(fake.promoted, ["b"]);
  assertEquals(loop.learners(), []);
  assertEquals(loop.stuck(), []);
  const info = lines.find((l) => l.msg === "etcd learner promoted to voter");
  assertEquals(info?.member_id, "b");
  assert((info?.waited_ms as number) >= 90_000);

  // Another replica promoted it first: dropped quietly.
  fake.members.push(member("c", true));
  fake.answers.set("c", "voter");
  const t = await loop.tick();
  assertEquals([t.promoted, t.waiting, t.error], [[], [], null]);

  // The cluster cannot be listed: said once per outage, not every pass.
  fake.listError = new Error("etcd unreachable");
  await pass(15_000);
  await pass(15_000);
  const listWarn = lines.filter((l) =>
    l.msg === "promote loop: cannot list etcd members" && l.level === "warn"
  );
  assertEquals(listWarn.length, 1);
  assertEquals((await loop.tick()).error, "etcd unreachable");

  await loop.stop();
  assertEquals(timers.pending, 0, "stop cancels the next pass");
});
