/**
 * The agent's bootstrap messages, one per row of the spec's "Bootstrap failures" table
 * (developer guide 001 "Troubleshooting › Bootstrap failures", troubleshooting reference 000
 * "bootstrap failures") and its "common boot patterns": each step runs a real `otherix-agent`
 * process (test/harness.ts `startAgent`, the binary's own sandbox) against a real control
 * plane (in-process, real agent-facing TLS port and store) and reads the agent's JSON log.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { createJoinToken, revokeJoinToken } from "../../cp/join_tokens.ts";
import { keys } from "../../cp/repo/records.ts";
import { freePort, startAgent, tempRoot } from "../harness.ts";
import { LogCapture, startTestCp } from "../cp/fixtures.ts";

interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** The JSON log lines of an agent's output (non-JSON lines skipped). */
function logLines(out: string): LogLine[] {
  return out.split("\n").flatMap((l) => {
    try {
      const v = JSON.parse(l);
      return typeof v?.msg === "string" ? [v as LogLine] : [];
    } catch {
      return [];
    }
  });
}

interface Run {
  code: number;
  lines: LogLine[];
  output: string;
}

/** Runs an agent that is expected to fail bootstrap; waits for it to exit. */
async function failingAgent(
  opts: { cpUrl: string; fingerprint: string; token?: string; node?: string },
  prepare?: (root: string) => Promise<void>,
): Promise<Run> {
  const root = await tempRoot("otx-bmsg");
  try {
    if (prepare) await prepare(root);
    const a = await startAgent({
      root,
      cpUrl: opts.cpUrl,
      caFingerprint: opts.fingerprint,
      nodeName: opts.node ?? "node-a",
      token: opts.token,
    });
    const status = await a.proc.status();
    return { code: status.code, lines: logLines(a.proc.output), output: a.proc.output };
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** The one fatal (`error`) line of a failed run; asserts exit status 1 and no cert written. */
function fatalOf(run: Run): string {
  assertEquals(run.code, 1, run.output);
  const errors = run.lines.filter((l) => l.level === "error");
  assertEquals(errors.length, 1, run.output);
  assert(!run.lines.some((l) => l.msg === "agent: bootstrap complete"), run.output);
  return errors[0].msg;
}

async function mint(cp: ControlPlane, node: string, over: { max_uses?: number; now?: Date } = {}) {
  return await createJoinToken(cp.ctx.store, { node_name: node, max_uses: over.max_uses }, {
    defaultTtlSeconds: 600,
    createdBy: "test",
    caFingerprint: cp.caFingerprint,
    now: over.now ?? new Date(),
  });
}

Deno.test("bootstrap messages: each spec row, read from a real agent's log", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-bmsg-cp-" });
  const cp = await startTestCp(dir, new LogCapture());
  const cpUrl = `https://127.0.0.1:${cp.agentPort}`;
  const step = (name: string, fn: () => Promise<void>) => t.step({ name, fn });
  const rejected = (status: number, code: string) =>
    `bootstrap: CSR submission rejected by CP: HTTP ${status} ${code}`;
  try {
    await step("bootstrap complete, then using existing cert material", async () => {
      const root = await tempRoot("otx-bmsg");
      try {
        const tok = await mint(cp, "node-ok");
        const opts = { root, cpUrl, caFingerprint: cp.caFingerprint, nodeName: "node-ok" };
        const first = await startAgent({ ...opts, token: tok.token });
        await first.proc.waitForOutput((o) =>
          logLines(o).some((l) => l.msg === "agent: bootstrap complete" && l.node === "node-ok")
        );
        await first.proc.stop();
        const again = await startAgent(opts);
        await again.proc.waitForOutput((o) =>
          logLines(o).some((l) => l.msg === "agent: using existing cert material")
        );
        await again.proc.stop();
        assert(!logLines(again.proc.output).some((l) => l.msg === "agent: bootstrap complete"));
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    });

    await step("CA fingerprint mismatch", async () => {
      const wrong = "sha256:" + "ab".repeat(32);
      const tok = await mint(cp, "node-a");
      const msg = fatalOf(await failingAgent({ cpUrl, fingerprint: wrong, token: tok.token }));
      assertEquals(
        msg,
        `bootstrap: CA fingerprint mismatch (expected ${wrong} got ${cp.caFingerprint})`,
      );
      // The token went nowhere: still unused.
      const listed = await cp.ctx.store.range<{ id: string; uses: number }>(keys.joinToken(""));
      assertEquals(listed.kvs.find((kv) => kv.value.id === tok.id)?.value.uses, 0);
    });

    await step("token_expired", async () => {
      const tok = await mint(cp, "node-a", { now: new Date(Date.now() - 3600_000) });
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint, token: tok.token }),
      );
      assert(msg.startsWith(rejected(401, "token_expired")), msg);
    });

    await step("token_exhausted", async () => {
      const tok = await mint(cp, "node-x", { max_uses: 1 });
      const root = await tempRoot("otx-bmsg");
      try {
        const used = await startAgent({
          root,
          cpUrl,
          caFingerprint: cp.caFingerprint,
          nodeName: "node-x",
          token: tok.token,
        });
        await used.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"));
        await used.proc.stop();
      } finally {
        await Deno.remove(root, { recursive: true });
      }
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint, token: tok.token }),
      );
      assert(msg.startsWith(rejected(401, "token_exhausted")), msg);
    });

    await step("unknown token", async () => {
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint, token: "otxjoin_never-minted" }),
      );
      assert(msg.startsWith(rejected(401, "unauthenticated")), msg);
    });

    await step("revoked token", async () => {
      const tok = await mint(cp, "node-a", { max_uses: 5 });
      await revokeJoinToken(cp.ctx.store, tok.id);
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint, token: tok.token }),
      );
      assert(msg.startsWith(rejected(401, "unauthenticated")), msg);
    });

    await step("cp unreachable", async () => {
      const port = freePort();
      const msg = fatalOf(
        await failingAgent({
          cpUrl: `https://127.0.0.1:${port}`,
          fingerprint: cp.caFingerprint,
          token: "otxjoin_whatever",
        }),
      );
      assert(
        msg.startsWith(`bootstrap: fetch /v1/ca: dial tcp 127.0.0.1:${port}: `) &&
          msg.endsWith("connection refused"),
        msg,
      );
    });

    await step("partial state: cert without key", async () => {
      let cert = "";
      let key = "";
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint }, async (root) => {
          const certs = join(root, "var/lib/otherix/certs");
          await Deno.mkdir(certs, { recursive: true });
          cert = join(certs, "agent.crt");
          key = join(certs, "agent.key");
          await Deno.writeTextFile(cert, cp.ctx.pki.ca.certPem);
        }),
      );
      // Spec: "cert <path> exists but key <path> missing"; 001: "partial bootstrap state".
      assertEquals(msg, `partial bootstrap state: cert ${cert} exists but key ${key} missing`);
    });

    await step("partial state: key without cert", async () => {
      let cert = "";
      let key = "";
      const msg = fatalOf(
        await failingAgent({ cpUrl, fingerprint: cp.caFingerprint }, async (root) => {
          const certs = join(root, "var/lib/otherix/certs");
          await Deno.mkdir(certs, { recursive: true });
          cert = join(certs, "agent.crt");
          key = join(certs, "agent.key");
          await Deno.writeTextFile(key, "-----BEGIN PRIVATE KEY-----\n");
        }),
      );
      assertEquals(msg, `partial bootstrap state: key ${key} exists but cert ${cert} missing`);
    });

    await step("node name mismatch: the token's node wins, with a warning", async () => {
      // No spec row: the certificate's CN (the token's node) is the node's identity.
      const root = await tempRoot("otx-bmsg");
      try {
        const tok = await mint(cp, "node-token");
        const a = await startAgent({
          root,
          cpUrl,
          caFingerprint: cp.caFingerprint,
          nodeName: "node-config",
          token: tok.token,
        });
        await a.proc.waitForOutput((o) =>
          logLines(o).some((l) => l.msg === "agent: bootstrap complete" && l.node === "node-token")
        );
        await a.proc.stop();
        const warn = logLines(a.proc.output).find((l) => l.level === "warn" && l.requested);
        assertEquals(
          [warn?.msg, warn?.requested, warn?.node],
          [
            "bootstrap: the join token names a different node; using the certificate's CN",
            "node-config",
            "node-token",
          ],
        );
        assert(await cp.ctx.store.get(keys.node("node-token")));
        assertEquals(await cp.ctx.store.get(keys.node("node-config")), null);
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    });
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
