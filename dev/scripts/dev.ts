/**
 * The dev pipeline's targets (spec 001 "Running Otherix on macOS for development", "Phase D"),
 * run as `deno task <target>` or `make <target>` (the Makefile calls the tasks):
 *
 * | target | Lima (macOS) | Linux native |
 * | --- | --- | --- |
 * | `etcd-reset` | wipes the control plane's data dir (store and cluster CA together) | same |
 * | `lima-ensure-one` | the VM `otherix-dev` exists and runs (nested virtualization where the host has it) | — |
 * | `bootstrap-dev` | lima-ensure-one, cross-builds the agent, copies binary + config into the VM; does not start it | writes agent.yaml, the directories and (with systemd) the dev unit; does not start it |
 * | `build-api` | `bin/otherix-api` for the dev config's sandbox (`deno compile`; offline: DENORT_BIN) | same |
 * | `seed-dev` | CLI cluster, join token, bootstrap files, agent start, wait for the node (dev/scripts/seed.ts) | same |
 * | `deploy-dev` | cross-build, copy, `systemctl restart otherix-agent` | restarts the agent (it runs from source) |
 * | `clean-dev` | stops and deletes the VM | stops the agent (its VMs too) and removes its files; stops a control plane local-dev-start started |
 * | `local-dev-start` | starts the control plane (`.local/run/otherix-api.log`), then seed-dev | bootstrap-dev, the control plane, seed-dev |
 *
 * Settings come from the environment (dev/scripts/env.ts). Failures print
 * `dev: <target>: <why>` and exit 1.
 *
 * @module
 */
import { join } from "node:path";
import { apiSandboxRoots } from "../../cp/config.ts";
import { ENTRY_POINTS, permissionFlags, STANDARD_SANDBOX } from "../../scripts/permissions.ts";
import {
  AGENT_UNIT,
  agentHostOf,
  limaAgentHost,
  nativeAgentHost,
  nativeAgentYaml,
  nativeDevUnit,
} from "./agent_host.ts";
import { daemonFiles, daemonPid, startDaemon, stopDaemon } from "./daemon.ts";
import { type DevEnv, resolveEnv } from "./env.ts";
import { ensureLimaVm, LIMA_VM, limaStatus, limaSudo, linuxTarget, type MacHost } from "./lima.ts";
import { DevError, must, run, say, sleep } from "./proc.ts";
import { seedDev } from "./seed.ts";

/** The targets. */
export const TARGETS = [
  "etcd-reset",
  "lima-ensure-one",
  "bootstrap-dev",
  "build-api",
  "seed-dev",
  "deploy-dev",
  "clean-dev",
  "local-dev-start",
] as const;
/** A target name. */
export type Target = (typeof TARGETS)[number];

/** The control plane's daemon name (log and pid under `.local/run`). */
export const API_DAEMON = "otherix-api";

async function apiAnswers(env: DevEnv): Promise<boolean> {
  try {
    const res = await fetch(`${env.serverUrl}/healthz`, { signal: AbortSignal.timeout(2000) });
    await res.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

/** `etcd-reset`: the store and the cluster CA go together (spec 000 "cluster CA divergence"). */
async function etcdReset(env: DevEnv): Promise<void> {
  const dir = env.api.store.data_dir;
  if (await apiAnswers(env)) {
    throw new DevError(
      `otherix-api is running at ${env.serverUrl}: stop it first (\`make clean-dev\` stops one ` +
        `that local-dev-start started)`,
    );
  }
  let entries: string[] = [];
  try {
    entries = [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  for (const name of entries) await Deno.remove(join(dir, name), { recursive: true });
  say(
    "etcd-reset",
    entries.length
      ? `wiped ${dir} (store and cluster CA: ${entries.sort().join(", ")})`
      : `${dir} is already empty`,
  );
}

/**
 * `deno compile` argv of the Lima VM's agent: linux, the host's arch, the standard roots'
 * sandbox (the VM uses /etc/otherix, /var/lib/otherix, /run/otherix), into
 * `bin/linux-<arch>/otherix-agent`.
 */
export function agentBuildArgv(repo: string, arch: MacHost["arch"]): string[] {
  return [
    Deno.execPath(),
    "compile",
    "--target",
    linuxTarget(arch),
    ...permissionFlags("otherix-agent", STANDARD_SANDBOX),
    "--output",
    join(repo, "bin", `linux-${arch}`, "otherix-agent"),
    join(repo, ENTRY_POINTS["otherix-agent"]),
  ];
}

/**
 * `deno compile` argv of `build-api`: `bin/otherix-api` with the sandbox of the dev api config
 * (read: the config file and the data dir; write: the data dir), so
 * `./bin/otherix-api --config dev/config/api.yaml` works (the production binaries of
 * `deno task compile` carry the standard roots instead).
 */
export function apiBuildArgv(env: DevEnv): string[] {
  return [
    Deno.execPath(),
    "compile",
    ...permissionFlags("otherix-api", apiSandboxRoots(env.api, env.apiConfigFile)),
    "--output",
    join(env.repo, "bin", "otherix-api"),
    join(env.repo, ENTRY_POINTS["otherix-api"]),
  ];
}

/** The linux agent binary for the Lima VM: `OTHERIX_DEV_AGENT_BINARY`, else cross-built. */
async function linuxAgent(env: DevEnv, host: MacHost): Promise<string> {
  const given = env.env("OTHERIX_DEV_AGENT_BINARY");
  if (given) {
    say("build", `using the prebuilt agent ${given}`);
    return given;
  }
  const argv = agentBuildArgv(env.repo, host.arch);
  const out = argv[argv.indexOf("--output") + 1];
  say("build", `deno compile --target ${linuxTarget(host.arch)} -> ${out}`);
  const res = await run(argv);
  if (res.code !== 0) {
    throw new DevError(
      "building the agent failed: deno compile downloads Deno's runtime for the target; " +
        "offline, set DENORT_BIN (a linux denort of the same Deno version) or " +
        "OTHERIX_DEV_AGENT_BINARY (a built agent)",
    );
  }
  return out;
}

/** Copies the agent binary and the dev agent config into the VM. */
async function copyAgentIntoLima(env: DevEnv, binary: string): Promise<void> {
  say("lima", `copying otherix-agent and dev/config/agent.yaml into ${LIMA_VM}`);
  await must(["limactl", "copy", binary, `${LIMA_VM}:/tmp/otherix-agent`]);
  await must(
    limaSudo("install", "-m", "0755", "/tmp/otherix-agent", "/usr/local/bin/otherix-agent"),
  );
  await must([
    "limactl",
    "copy",
    join(env.repo, "dev/config/agent.yaml"),
    `${LIMA_VM}:/tmp/otherix-agent.yaml`,
  ]);
  await must(
    limaSudo("install", "-D", "-m", "0644", "/tmp/otherix-agent.yaml", "/etc/otherix/agent.yaml"),
  );
  await must(limaSudo("systemctl", "daemon-reload"));
}

/** `bootstrap-dev`: the agent host is ready, the agent is not started. */
async function bootstrapDev(env: DevEnv): Promise<void> {
  if (env.mode === "lima") {
    const host = await ensureLimaVm(env.repo, "bootstrap-dev");
    await copyAgentIntoLima(env, await linuxAgent(env, host));
  } else {
    const l = env.native!;
    for (const d of [l.configDir, l.stateDir]) {
      await Deno.mkdir(d, { recursive: true, mode: 0o755 });
    }
    await Deno.mkdir(l.runDir, { recursive: true, mode: 0o750 });
    const host = nativeAgentHost(env);
    await host.writeFile(join(l.configDir, "agent.yaml"), nativeAgentYaml(l), 0o644);
    say("bootstrap-dev", `wrote ${join(l.configDir, "agent.yaml")} (agent on :${l.agentPort})`);
    if (l.systemd) {
      await host.writeFile(
        join(l.unitDir, `${AGENT_UNIT}.service`),
        nativeDevUnit(l, env.repo),
        0o644,
      );
      await must(
        l.scope === "user" ? ["systemctl", "--user", "daemon-reload"] : [
          "systemctl",
          "daemon-reload",
        ],
      );
      say("bootstrap-dev", `installed ${join(l.unitDir, `${AGENT_UNIT}.service`)}`);
    } else {
      say(
        "bootstrap-dev",
        `no systemd here: seed-dev runs the agent as a daemon (log ` +
          `${daemonFiles(env.runDir, AGENT_UNIT).log})`,
      );
    }
    const pools = join(l.stateDir, "pools") + "/";
    if (!env.api.storage_pools.allowed_path_prefixes.some((p) => pools.startsWith(p))) {
      say(
        "bootstrap-dev",
        `note: the agent's pools live in ${pools}; the control plane must ` +
          `allow it (storage_pools.allowed_path_prefixes; local-dev-start adds it)`,
      );
    }
  }
  say("bootstrap-dev", "done; the agent starts with `make seed-dev` (after the control plane)");
}

/** `build-api`: compiles the control plane with the dev config's sandbox. */
async function buildApi(env: DevEnv): Promise<void> {
  const argv = apiBuildArgv(env);
  const out = argv[argv.indexOf("--output") + 1];
  say(
    "build-api",
    `deno compile -> ${out} (sandbox: ${env.apiConfigFile}, ${env.api.store.data_dir})`,
  );
  const res = await run(argv);
  if (res.code !== 0) {
    throw new DevError(
      "deno compile failed: it downloads Deno's runtime (denort); offline, set DENORT_BIN to a " +
        "denort binary of the same Deno version",
    );
  }
  say("build-api", `run it: ${out} --config ${env.apiConfigFile}`);
}

/** `deploy-dev`: the new agent code runs. */
async function deployDev(env: DevEnv): Promise<void> {
  if (env.mode === "lima") {
    const host = await ensureLimaVm(env.repo, "deploy-dev");
    await copyAgentIntoLima(env, await linuxAgent(env, host));
    await limaAgentHost().restartAgent();
  } else {
    await nativeAgentHost(env).restartAgent();
  }
  say("deploy-dev", "otherix-agent restarted (VMs keep running; it re-adopts them)");
}

/** `clean-dev`: the agent host goes away; the control plane's data stays (etcd-reset wipes it). */
async function cleanDev(env: DevEnv): Promise<void> {
  if (env.mode === "lima") {
    const status = await limaStatus();
    if (status === null) {
      say("clean-dev", `no Lima VM ${LIMA_VM}`);
    } else {
      if (status === "Running") await must(["limactl", "stop", LIMA_VM]);
      await must(["limactl", "delete", LIMA_VM]);
      say("clean-dev", `deleted Lima VM ${LIMA_VM}`);
    }
  } else {
    const l = env.native!;
    const host = nativeAgentHost(env);
    if (l.systemd) {
      const sc = l.scope === "user" ? ["systemctl", "--user"] : ["systemctl"];
      await run([...sc, "stop", AGENT_UNIT]);
      await run([...sc, "disable", AGENT_UNIT], { capture: true });
      await Deno.remove(join(l.unitDir, `${AGENT_UNIT}.service`)).catch(() => {});
      await run([...sc, "daemon-reload"]);
    } else {
      await host.stopAgent();
    }
    await stopVms(l.runDir);
    // The agent's files; never the control plane's data dir, even when it lies inside.
    const keep = env.api.store.data_dir;
    const removed: string[] = [];
    for (const f of ["agent.yaml", "bootstrap.env", "bootstrap-token"]) {
      const p = join(l.configDir, f);
      if (await Deno.remove(p).then(() => true, () => false)) removed.push(p);
    }
    for (const dir of [l.stateDir, l.runDir]) {
      let names: string[] = [];
      try {
        names = [...Deno.readDirSync(dir)].map((e) => e.name);
      } catch { /* absent */ }
      for (const n of names) {
        const p = join(dir, n);
        if (p === keep || keep.startsWith(p + "/")) continue;
        await Deno.remove(p, { recursive: true });
        removed.push(p);
      }
    }
    say("clean-dev", removed.length ? `removed ${removed.join(", ")}` : "nothing to remove");
  }
  if (await stopDaemon(env.runDir, API_DAEMON)) say("clean-dev", "stopped otherix-api");
}

/** Force-stops the dev agent's VMs: QEMU through its locked pidfile, never a recycled pid. */
async function stopVms(runDir: string): Promise<void> {
  let ids: string[] = [];
  try {
    ids = [...Deno.readDirSync(join(runDir, "vms"))].map((e) => e.name);
  } catch { /* none */ }
  for (const id of ids) {
    const pidfile = join(runDir, "vms", id, "qemu.pid");
    const res = await run(["pkill", "-KILL", "-F", pidfile, "-L"], { capture: true });
    if (res.code === 0) say("clean-dev", `stopped the QEMU of VM ${id}`);
  }
}

/** `local-dev-start`: the control plane (from source) and seed-dev in one go. */
async function localDevStart(env: DevEnv): Promise<void> {
  if (env.mode === "native") await bootstrapDev(env);
  else {
    const status = await limaStatus();
    if (status !== "Running") {
      throw new DevError(`Lima VM ${LIMA_VM} is not running: run \`make bootstrap-dev\` first`);
    }
  }
  if (await apiAnswers(env)) {
    say("local-dev-start", `otherix-api already answers at ${env.serverUrl}`);
  } else {
    const extra: Record<string, string> = {};
    if (env.native) {
      const pools = join(env.native.stateDir, "pools") + "/";
      const prefixes = env.api.storage_pools.allowed_path_prefixes;
      if (!prefixes.some((p) => pools.startsWith(p))) {
        extra.OTHERIX_STORAGE_POOLS__ALLOWED_PATH_PREFIXES = JSON.stringify([...prefixes, pools]);
      }
    }
    const files = daemonFiles(env.runDir, API_DAEMON);
    const pid = await startDaemon(env.runDir, API_DAEMON, [
      Deno.execPath(),
      "run",
      "--allow-all",
      join(env.repo, "scripts/run.ts"),
      "otherix-api",
      "--config",
      env.apiConfigFile,
    ], extra);
    say("local-dev-start", `otherix-api started (pid ${pid}); log: ${files.log}`);
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        const res = await fetch(`${env.serverUrl}/readyz`);
        await res.body?.cancel();
        if (res.ok) break;
      } catch { /* not yet */ }
      if (await daemonPid(env.runDir, API_DAEMON) === null) {
        throw new DevError(`otherix-api exited; see ${files.log}`);
      }
      await sleep(250);
    }
    if (!(await apiAnswers(env))) throw new DevError(`otherix-api did not start; see ${files.log}`);
  }
  await seedDev(env, agentHostOf(env));
}

/** Runs `target`; returns the exit status. */
export async function runTarget(target: string): Promise<number> {
  if (!TARGETS.includes(target as Target)) {
    console.error(`usage: dev/scripts/dev.ts ${TARGETS.join("|")}`);
    return 2;
  }
  try {
    const env = await resolveEnv();
    switch (target as Target) {
      case "etcd-reset":
        await etcdReset(env);
        break;
      case "lima-ensure-one":
        if (env.mode !== "lima") throw new DevError("lima-ensure-one is for the Lima mode");
        await ensureLimaVm(env.repo, target);
        break;
      case "bootstrap-dev":
        await bootstrapDev(env);
        break;
      case "build-api":
        await buildApi(env);
        break;
      case "seed-dev":
        await seedDev(env, agentHostOf(env));
        break;
      case "deploy-dev":
        await deployDev(env);
        break;
      case "clean-dev":
        await cleanDev(env);
        break;
      case "local-dev-start":
        await localDevStart(env);
        break;
    }
    return 0;
  } catch (e) {
    if (e instanceof DevError) {
      console.error(`dev: ${target}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await runTarget(Deno.args[0] ?? ""));
