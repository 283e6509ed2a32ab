/**
 * `otherix-api`: the control plane entry point. Parses `--config FILE` (default
 * `/etc/otherix/api.yaml`), loads the config, starts the control plane and stops it
 * gracefully on SIGINT/SIGTERM; `join` first joins an etcd-backed cluster
 * (cp/cluster/joiner.ts); `backup`/`restore` are cp/backup_cli.ts. All logic lives in `cp/app.ts` and the modules it wires.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError } from "../shared/config.ts";
import { DEFAULT_API_CONFIG_FILE } from "../shared/constants.ts";
import { createLogger } from "../shared/log.ts";
import { startControlPlane } from "./app.ts";
import { loadApiConfig } from "./config.ts";
import { BACKUP_COMMANDS, runBackupCommand } from "./backup_cli.ts";
import { joinFromConfig } from "./cluster/joiner.ts";

const USAGE = `usage: otherix-api [--config FILE]
       otherix-api join --server URL --token TOKEN --ca-fingerprint sha256:… [--config FILE]
       otherix-api backup|restore …   (see otherix-api backup --help)

The Otherix control plane: public REST API, agent-facing TLS API, task workers.

options:
  --config FILE   config file (default ${DEFAULT_API_CONFIG_FILE}); every key can be
                  overridden with OTHERIX_<SECTION>__<KEY> env vars
  -h, --help      show this help

first boot: set OTHERIX_BOOTSTRAP_ADMIN_EMAIL and OTHERIX_BOOTSTRAP_ADMIN_PASSWORD to
create the initial admin user.

join: a further replica (store.backend: etcd, an empty data dir) joins the cluster of the
replica at URL (its agent port, https) with a token from \`otherix cluster join-token create\`,
pinning the cluster CA; then it serves. Once joined, start it without \`join\`.
`;

/** Runs the binary with `args`; resolves with the exit code when it should exit early. */
async function main(args: string[], joining: boolean): Promise<number | null> {
  let values: {
    config?: string;
    help?: boolean;
    server?: string;
    token?: string;
    "ca-fingerprint"?: string;
  };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: "string" },
        help: { type: "boolean", short: "h" },
        server: { type: "string" },
        token: { type: "string" },
        "ca-fingerprint": { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`otherix-api: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const joinFlags = [values.server, values.token, values["ca-fingerprint"]];
  if (!joining && joinFlags.some((v) => v !== undefined)) {
    console.error(`otherix-api: --server, --token and --ca-fingerprint go with join\n\n${USAGE}`);
    return 2;
  }
  if (joining && joinFlags.some((v) => !v)) {
    console.error(`otherix-api join: --server, --token and --ca-fingerprint are required\n`);
    return 2;
  }
  let cfg;
  try {
    cfg = await loadApiConfig(values.config ?? DEFAULT_API_CONFIG_FILE);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`otherix-api: ${e.message}`);
      return 1;
    }
    throw e;
  }
  const log = createLogger("api", cfg.log.level);
  if (joining) {
    try {
      await joinFromConfig(cfg, log, {
        server: values.server!,
        token: values.token!,
        caFingerprint: values["ca-fingerprint"]!,
      });
    } catch (e) {
      console.error(`otherix-api join: ${(e as Error).message}`);
      return 1;
    }
  }
  let cp;
  try {
    cp = await startControlPlane(cfg, log);
  } catch (e) {
    log.error("startup failed", { err: (e as Error).message });
    return 1;
  }
  let shuttingDown = false;
  const onSignal = (sig: Deno.Signal) => {
    if (shuttingDown) return;
    shuttingDown = true;
    log.info("shutting down", { signal: sig });
    cp.stop().then(() => Deno.exit(0), (e) => {
      log.error("shutdown failed", { err: e });
      Deno.exit(1);
    });
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => onSignal(sig));
  }
  return null;
}

if (import.meta.main) {
  const [first, ...rest] = Deno.args;
  const sub = BACKUP_COMMANDS.find((c) => c === first);
  const code = sub
    ? await runBackupCommand(sub, rest)
    : first === "join"
    ? await main(rest, true)
    : await main(Deno.args, false);
  if (code !== null) Deno.exit(code);
}
