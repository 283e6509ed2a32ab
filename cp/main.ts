/**
 * `otherix-api`: the control plane entry point. Parses `--config FILE` (default
 * `/etc/otherix/api.yaml`), loads the config, starts the control plane and stops it
 * gracefully on SIGINT/SIGTERM. All logic lives in `cp/app.ts` and the modules it wires.
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

const USAGE = `usage: otherix-api [--config FILE]
       otherix-api backup|restore …   (see otherix-api backup --help)

The Otherix control plane: public REST API, agent-facing TLS API, task workers.

options:
  --config FILE   config file (default ${DEFAULT_API_CONFIG_FILE}); every key can be
                  overridden with OTHERIX_<SECTION>__<KEY> env vars
  -h, --help      show this help

first boot: set OTHERIX_BOOTSTRAP_ADMIN_EMAIL and OTHERIX_BOOTSTRAP_ADMIN_PASSWORD to
create the initial admin user.
`;

/** Runs the binary with `args`; resolves with the exit code when it should exit early. */
async function main(args: string[]): Promise<number | null> {
  let values: { config?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: "string" },
        help: { type: "boolean", short: "h" },
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
  const code = sub ? await runBackupCommand(sub, rest) : await main(Deno.args);
  if (code !== null) Deno.exit(code);
}
