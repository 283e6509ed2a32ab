/**
 * Test fixture: a real single-member `etcd` (Debian `etcd-server`, `/usr/bin/etcd` 3.4) on
 * free loopback ports in a temporary directory, optionally with TLS for clients and peers
 * (client certificate required) using certificates from a cluster CA made by shared/pki.ts,
 * the same way the control plane's cluster CA issues them. Never uses etcd's default ports
 * 2379/2380 (a packaged etcd service may hold them).
 *
 * Timings are the smallest etcd accepts for a fast test (heartbeat 10 ms, election 100 ms),
 * so the single member elects itself at once; the minimum lease TTL then rounds up to etcd's
 * floor of 1 s, and expired leases are revoked by the leader's lessor loop, which runs every
 * 500 ms (etcd 3.4 `lessor.runLoop`), so a lease is gone 0–0.5 s after its expiry.
 *
 * @module
 */
import { join } from "node:path";
import { type CertAndKey, createCa, issueServerCert, splitSans } from "../shared/pki.ts";
import { delay, freePort, Proc, waitFor } from "./harness.ts";

/** The etcd binary the fixture runs (`OTHERIX_TEST_ETCD` overrides it). */
export const ETCD_BINARY = Deno.env.get("OTHERIX_TEST_ETCD") ?? "/usr/bin/etcd";

/** Client TLS material for a TLS etcd, PEM. */
export interface EtcdClientTls {
  /** The CA that signed the etcd server certificate (and the client certificate). */
  caPem: string;
  /** A client certificate signed by that CA (serverAuth + clientAuth, CN `otherix-test`). */
  certPem: string;
  /** Its PKCS#8 private key. */
  keyPem: string;
  /** The CA itself (to issue more certificates in a test). */
  ca: CertAndKey;
  /** The files written for etcd and for file-based clients (config `ca_file` etc.). */
  files: { ca: string; cert: string; key: string };
}

/** A running test etcd. */
export interface TestEtcd {
  /** Client URLs, e.g. `["https://127.0.0.1:41234"]`. */
  endpoints: string[];
  /** Client TLS material; null for a plain-HTTP etcd. */
  tls: EtcdClientTls | null;
  /** The member's temporary directory (data dir and certificates). */
  dir: string;
  /** The etcd process (its output, for failure messages). */
  proc(): Proc;
  /** Stops the member (SIGTERM, then SIGKILL after 5 s), keeping its data dir and ports. */
  pause(): Promise<void>;
  /** Starts the stopped member again on the same ports and data; waits until healthy. */
  resume(): Promise<void>;
  /** Stops the member and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL and directory removal, synchronous (for an `unload` handler). */
  killSync(): void;
}

/** Options of {@link startEtcd}. */
export interface StartEtcdOptions {
  /** Serve clients and peers over TLS with client certificates required (default true). */
  tls?: boolean;
  /** Extra etcd flags (`--flag=value`), e.g. `--auto-compaction-retention=…`. */
  args?: string[];
}

/**
 * Starts a one-member etcd on free 127.0.0.1 ports in a fresh temp dir and waits (at most
 * 20 s) until `/health` answers `{"health":"true"}`.
 *
 * @throws Error with etcd's output when it does not become healthy
 */
export async function startEtcd(opts: StartEtcdOptions = {}): Promise<TestEtcd> {
  const tls = opts.tls ?? true;
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-etcdfx-" });
  const scheme = tls ? "https" : "http";
  const clientPort = freePort();
  let peerPort = freePort();
  while (peerPort === clientPort) peerPort = freePort();
  const clientUrl = `${scheme}://127.0.0.1:${clientPort}`;
  const peerUrl = `${scheme}://127.0.0.1:${peerPort}`;
  let clientTls: EtcdClientTls | null = null;
  const args = [
    "--name=test",
    `--data-dir=${join(dir, "data")}`,
    `--listen-client-urls=${clientUrl}`,
    `--advertise-client-urls=${clientUrl}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=test=${peerUrl}`,
    "--initial-cluster-state=new",
    "--initial-cluster-token=otherix-test",
    "--heartbeat-interval=10",
    "--election-timeout=100",
    "--logger=zap",
    "--log-outputs=stderr",
    "--log-level=warn",
  ];
  if (tls) {
    const ca = await createCa("otherix test etcd CA");
    const server = await issueServerCert(
      ca,
      "etcd",
      "otherix",
      splitSans(["127.0.0.1", "localhost"]),
    );
    const client = await issueServerCert(ca, "otherix-test", "otherix", splitSans(["localhost"]));
    const files = {
      ca: join(dir, "ca.crt"),
      cert: join(dir, "client.crt"),
      key: join(dir, "client.key"),
    };
    const serverCert = join(dir, "etcd.crt"), serverKey = join(dir, "etcd.key");
    for (
      const [path, pem] of [
        [files.ca, ca.certPem],
        [files.cert, client.certPem],
        [files.key, client.keyPem],
        [serverCert, server.certPem],
        [serverKey, server.keyPem],
      ]
    ) await Deno.writeTextFile(path, pem, { mode: 0o600 });
    clientTls = { caPem: ca.certPem, certPem: client.certPem, keyPem: client.keyPem, ca, files };
    args.push(
      `--cert-file=${serverCert}`,
      `--key-file=${serverKey}`,
      `--trusted-ca-file=${files.ca}`,
      "--client-cert-auth",
      `--peer-cert-file=${serverCert}`,
      `--peer-key-file=${serverKey}`,
      `--peer-trusted-ca-file=${files.ca}`,
      "--peer-client-cert-auth",
    );
  }
  args.push(...(opts.args ?? []));

  const httpClient = clientTls
    ? Deno.createHttpClient({
      caCerts: [clientTls.caPem],
      cert: clientTls.certPem,
      key: clientTls.keyPem,
    })
    : undefined;
  let proc: Proc | null = null;
  let stopped = false;

  const launch = async () => {
    proc = new Proc(
      "etcd",
      new Deno.Command(ETCD_BINARY, {
        args,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    const p = proc;
    const exited = p.child.status.then((s) => s);
    try {
      await waitFor(
        "etcd health",
        async () => {
          const early = await Promise.race([exited, delay(0).then(() => null)]);
          if (early) throw new Error(`etcd exited with ${early.code}`);
          const res = await fetch(`${clientUrl}/health`, { client: httpClient });
          const body = await res.json() as { health?: string };
          return body.health === "true";
        },
        20_000,
        20,
      );
    } catch (e) {
      await p.stop(1000);
      throw new Error(`etcd did not become healthy: ${(e as Error).message}\n${p.output}`);
    }
  };
  const halt = async () => {
    if (proc) await proc.stop(5000);
  };

  try {
    await launch();
  } catch (e) {
    httpClient?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
  return {
    endpoints: [clientUrl],
    tls: clientTls,
    dir,
    proc: () => proc!,
    pause: halt,
    resume: launch,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await halt();
      httpClient?.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    killSync: () => {
      if (stopped) return;
      stopped = true;
      try {
        proc?.child.kill("SIGKILL");
      } catch { /* already gone */ }
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* best effort */ }
    },
  };
}
