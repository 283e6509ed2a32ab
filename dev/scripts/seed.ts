/**
 * `seed-dev` (spec 001 "Phase D", "Step 1 — run seed-dev"), on a running control plane:
 *
 * 1. `otherix config add cluster --force` as the bootstrap admin (OTHERIX_BOOTSTRAP_ADMIN_EMAIL /
 *    _PASSWORD): a long-lived API token in the CLI config; the CLI tokens earlier runs stored
 *    for this cluster entry (same token name and description) are revoked, so re-runs leave one;
 * 2. `otherix node join-token create --node-name node-dev --ttl 10m --output json`;
 * 3. on the agent host, `bootstrap-token` (0600) and `bootstrap.env` (0644,
 *    `OTHERIX_BOOTSTRAP__CP_URL` = `$OTHERIX_CP_URL` or the default, `__CA_FINGERPRINT`,
 *    `__NODE_NAME`); agent certificates from another cluster CA, or for a node the control plane
 *    no longer knows, are removed so the agent joins again;
 * 4. restarts the agent (`systemctl restart otherix-agent` in Lima; `systemctl [--user]` or the
 *    dev daemon on Linux);
 * 5. polls the control plane for the node for up to 60 s (`OTHERIX_DEV_NODE_TIMEOUT_SECONDS`) and
 *    prints the spec's summary (`>> seed-dev complete`, node, pool, images).
 *
 * It creates no pool: the control plane provisions the default pool on every ready node.
 *
 * @module
 */
import { join } from "node:path";
import { cliTokenName } from "../../cli/commands/config.ts";
import { findCluster, loadConfig, resolveConfigPath } from "../../cli/config_store.ts";
import { certFingerprint } from "../../shared/pki.ts";
import type { AgentHost } from "./agent_host.ts";
import type { DevEnv } from "./env.ts";
import { DevError, must, say, sleep } from "./proc.ts";

const T = "seed-dev";

/** A JSON answer of the public API. */
interface Answer {
  status: number;
  // deno-lint-ignore no-explicit-any
  json: any;
}

async function call(env: DevEnv, path: string, token: string, method = "GET"): Promise<Answer> {
  const res = await fetch(env.serverUrl + path, {
    method,
    headers: { authorization: `Bearer ${token}` },
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch { /* empty or not JSON */ }
  return { status: res.status, json };
}

/** Runs the CLI from source (`deno task otherix -- ARGS`) with `extraEnv`. */
export async function otherix(
  env: DevEnv,
  args: string[],
  extraEnv: Record<string, string> = {},
): Promise<string> {
  const res = await must(
    [Deno.execPath(), "run", "--allow-all", join(env.repo, "scripts/run.ts"), "otherix", ...args],
    { capture: true, env: extraEnv },
  );
  return res.stdout;
}

/** The description `config add cluster` gives the token it mints (cli/commands/config.ts). */
function cliTokenDescription(cluster: string): string {
  return `otherix CLI, cluster ${cluster}`;
}

interface TokenMeta {
  id: string;
  name: string;
  description: string | null;
  created_at: string;
}

async function listTokens(env: DevEnv, token: string): Promise<TokenMeta[] | null> {
  const out: TokenMeta[] = [];
  let cursor: string | null = null;
  do {
    const q: string = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
    const r = await call(env, `/v1/users/me/api-tokens${q}`, token);
    if (r.status !== 200) return null;
    out.push(...r.json.items);
    cursor = r.json.next_cursor;
  } while (cursor);
  return out;
}

/** The CLI's stored token for the dev cluster entry, if any. */
async function storedToken(env: DevEnv): Promise<{ path: string; token: string | null }> {
  const path = resolveConfigPath(undefined, env.env);
  const entry = findCluster(await loadConfig(path), env.clusterName);
  return { path, token: entry?.token ?? null };
}

/**
 * Step 1: the CLI cluster entry, and the revocation of the tokens earlier runs stored.
 *
 * @returns the new API token and how many earlier ones were revoked
 */
async function configureCli(env: DevEnv): Promise<{ token: string; revoked: number }> {
  const email = env.env("OTHERIX_BOOTSTRAP_ADMIN_EMAIL");
  const password = env.env("OTHERIX_BOOTSTRAP_ADMIN_PASSWORD");
  if (!email || !password) {
    throw new DevError(
      "set OTHERIX_BOOTSTRAP_ADMIN_EMAIL and OTHERIX_BOOTSTRAP_ADMIN_PASSWORD (the admin the " +
        "control plane seeded on its first boot)",
    );
  }
  const before = await storedToken(env);
  const earlier = before.token ? await listTokens(env, before.token) : null;
  say(T, `otherix config add cluster --name ${env.clusterName} --server ${env.serverUrl} --force`);
  await otherix(env, [
    "config",
    "add",
    "cluster",
    "--name",
    env.clusterName,
    "--server",
    env.serverUrl,
    "--force",
  ], { OTHERIX_LOGIN: email, OTHERIX_PASSWORD: password });
  const after = await storedToken(env);
  if (!after.token) throw new DevError(`no token for ${env.clusterName} in ${after.path}`);
  const now = await listTokens(env, after.token);
  if (!now) throw new DevError("the new CLI token is refused by the control plane");
  const name = cliTokenName(Deno.hostname());
  const ours = now.filter((t) =>
    t.name === name && t.description === cliTokenDescription(env.clusterName)
  );
  const known = new Set((earlier ?? []).map((t) => t.id));
  const fresh = ours.filter((t) => !known.has(t.id));
  // The token just minted: the one the earlier listing did not have (else the newest).
  const newest = fresh.length === 1
    ? fresh[0]
    : [...ours].sort((a, b) => a.created_at.localeCompare(b.created_at)).pop();
  let revoked = 0;
  for (const t of ours) {
    if (t.id === newest?.id) continue;
    const r = await call(env, `/v1/users/me/api-tokens/${t.id}`, after.token, "DELETE");
    if (r.status === 204) revoked++;
  }
  if (before.token && before.token !== after.token) {
    const still = await call(env, "/v1/users/me", before.token);
    if (still.status === 200) {
      throw new DevError("the previous CLI token still works after seed-dev revoked it");
    }
  }
  return { token: after.token, revoked };
}

/** `bootstrap.env` for the agent (spec: `OTHERIX_BOOTSTRAP__*` koanf-style overrides). */
export function bootstrapEnv(cpUrl: string, caFingerprint: string, nodeName: string): string {
  return [
    "# Written by seed-dev (dev/scripts/seed.ts): the agent's join parameters.",
    `OTHERIX_BOOTSTRAP__CP_URL=${cpUrl}`,
    `OTHERIX_BOOTSTRAP__CA_FINGERPRINT=${caFingerprint}`,
    `OTHERIX_BOOTSTRAP__NODE_NAME=${nodeName}`,
    "",
  ].join("\n");
}

/**
 * Removes agent certificates that cannot work: issued under another cluster CA (the control
 * plane was reset), or for a node the control plane no longer has. The agent then joins again
 * with the fresh token.
 */
async function dropStaleCerts(
  env: DevEnv,
  host: AgentHost,
  caFingerprint: string,
  nodeKnown: boolean,
): Promise<void> {
  const caPem = await host.readFile(join(host.certDir, "ca.crt"));
  const certPem = await host.readFile(join(host.certDir, "agent.crt"));
  if (caPem === null && certPem === null) return;
  let agentCa = "unreadable";
  try {
    if (caPem !== null) agentCa = await certFingerprint(caPem);
  } catch { /* stays unreadable */ }
  const why = agentCa !== caFingerprint
    ? `its certificates are from another cluster CA (${agentCa})`
    : !nodeKnown
    ? `the control plane has no node ${env.nodeName}`
    : null;
  if (!why) return;
  say(T, `${why}: removing them from ${host.name} so the agent joins again`);
  await host.remove(["agent.crt", "agent.key", "ca.crt"].map((f) => join(host.certDir, f)));
}

/** Runs seed-dev against `host`. */
export async function seedDev(env: DevEnv, host: AgentHost): Promise<void> {
  try {
    const ready = await fetch(`${env.serverUrl}/readyz`);
    await ready.body?.cancel();
    if (!ready.ok) throw new Error(`readyz answered ${ready.status}`);
  } catch (e) {
    throw new DevError(
      `otherix-api is not ready at ${env.serverUrl} (${(e as Error).message}): start it with ` +
        `\`make build-api && ./bin/otherix-api --config dev/config/api.yaml\` or \`make local-dev-start\``,
    );
  }
  const { token, revoked } = await configureCli(env);
  if (revoked) say(T, `revoked ${revoked} previous CLI token(s) of cluster ${env.clusterName}`);

  say(T, `otherix node join-token create --node-name ${env.nodeName} --ttl 10m --output json`);
  const join1 = JSON.parse(
    await otherix(env, [
      "--cluster",
      env.clusterName,
      "node",
      "join-token",
      "create",
      "--node-name",
      env.nodeName,
      "--ttl",
      "10m",
      "--output",
      "json",
    ]),
  );
  const fp: string = join1.ca_fingerprint;

  const before = await call(env, `/v1/nodes/${env.nodeName}`, token);
  await dropStaleCerts(env, host, fp, before.status === 200);
  say(
    T,
    `writing bootstrap-token (0600) and bootstrap.env (0644) to ${host.name}:${host.configDir}`,
  );
  await host.writeFile(join(host.configDir, "bootstrap-token"), join1.token + "\n", 0o600);
  await host.writeFile(
    join(host.configDir, "bootstrap.env"),
    bootstrapEnv(env.cpUrl, fp, env.nodeName),
    0o644,
  );

  say(T, `restarting otherix-agent on ${host.name}`);
  await host.restartAgent();
  // After the restart returned: a later heartbeat is the new agent's (the control plane's
  // clock, which is this machine's: it runs here).
  const started = Date.now();

  // The node row appears when the join commits (a fresh join), or heartbeats again (a re-run).
  const deadline = started + env.nodeTimeoutSeconds * 1000;
  let node: Answer | null = null;
  while (Date.now() < deadline) {
    const r = await call(env, `/v1/nodes/${env.nodeName}`, token);
    const seen = r.status === 200 &&
      (Date.parse(r.json.created_at) >= started ||
        (r.json.last_heartbeat_at && Date.parse(r.json.last_heartbeat_at) >= started));
    if (seen) {
      node = r;
      break;
    }
    await sleep(1000);
  }
  if (!node) {
    throw new DevError(
      `node ${env.nodeName} did not appear within ${env.nodeTimeoutSeconds}s; check the agent: ` +
        host.logsHint,
    );
  }
  const pool = await call(env, "/v1/cluster/default-pool", token);
  const poolName = pool.json?.default_pool_name ?? env.api.storage_pools.default_pool_name;
  console.log(">> seed-dev complete");
  console.log(`node : ${env.nodeName} (id=${node.json.id})`);
  console.log(`pool : ${poolName} (cluster default, CP-auto-provisioned on ready nodes)`);
  console.log("images : none staged (vm create fetches the image URL on first use)");
}
