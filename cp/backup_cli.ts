/**
 * `otherix-api backup` and `otherix-api restore` (cp/main.ts dispatches here; the work is in
 * cp/backup.ts):
 *
 * ```sh
 * otherix-api backup  --config /etc/otherix/api.yaml --to FILE|- [--without-ca]
 * otherix-api restore --config /etc/otherix/api.yaml --from FILE|- [--ca-from FILE]
 * ```
 *
 * Both act on the config's `store.data_dir`. `-` is stdout / stdin: the binary's sandbox
 * writes only under its data directory (/var/lib/otherix for the compiled binary), so
 * `--to - > FILE` reaches any path. Errors print `otherix-api <command>: <code>: <message>`
 * with a code of shared/errors.ts and exit 1; bad usage exits 2.
 *
 * @module
 */
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { ConfigError } from "../shared/config.ts";
import { DEFAULT_API_CONFIG_FILE } from "../shared/constants.ts";
import { ApiError } from "../shared/errors.ts";
import { createBackup, restoreBackup } from "./backup.ts";
import { decodeBackup } from "./backup_file.ts";
import { loadApiConfig } from "./config.ts";
import { createEtcdBackup, restoreEtcdBackup } from "./backup_etcd.ts";
import { createLogger } from "../shared/log.ts";

/** The subcommands of `otherix-api` this module runs. */
export const BACKUP_COMMANDS = ["backup", "restore"] as const;

/** Usage of both subcommands. */
export const BACKUP_USAGE = `usage: otherix-api backup --to FILE|- [--config FILE] [--without-ca]
       otherix-api restore --from FILE|- [--config FILE] [--ca-from FILE]

backup   a consistent snapshot of the control plane's store (safe while it runs), with the
         cluster CA's private key unless --without-ca (the file's header says which); the
         file (mode 0600) holds every secret of the cluster: keep it safe
restore  writes a backup into the config's store.data_dir, which must hold no store; refuses a
         backup whose CA differs from the data directory's pki/ca.crt (CA divergence). A
         backup taken --without-ca needs --ca-from, a backup of the same cluster with its CA

With store.backend: etcd (this replica's own member), backup reads the running cluster
through the member at one etcd revision, and restore seeds a new one-member etcd cluster
in the empty data dir (start otherix-api on it, then join the other replicas to it).

FILE "-" is stdout (backup) or stdin (restore). --config defaults to ${DEFAULT_API_CONFIG_FILE}.
`;

/** Where a subcommand reads and writes (injectable for tests). */
export interface BackupIo {
  stdout: (bytes: Uint8Array) => Promise<void>;
  stdin: () => Promise<Uint8Array>;
  out: (line: string) => void;
  err: (line: string) => void;
  hostname: () => string;
}

const defaultIo: BackupIo = {
  stdout: async (bytes) => {
    const w = Deno.stdout.writable.getWriter();
    await w.write(bytes);
    w.releaseLock();
  },
  stdin: async () => new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer()),
  out: (line) => console.log(line),
  err: (line) => console.error(line),
  hostname: () => {
    try {
      return Deno.hostname();
    } catch {
      return "unknown";
    }
  },
};

/** A file argument the sandbox refused. */
function sandboxError(path: string, verb: "read" | "write", flag: string): ApiError {
  return new ApiError(
    "validation_failed",
    `cannot ${verb} ${path}: otherix-api's sandbox ${verb}s only its config and data ` +
      `directory; use ${flag} - and a shell redirection`,
  );
}

async function readInput(path: string, flag: string, io: BackupIo): Promise<Uint8Array> {
  if (path === "-") return await io.stdin();
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable) throw sandboxError(path, "read", flag);
    if (e instanceof Deno.errors.NotFound) {
      throw new ApiError("validation_failed", `${flag} ${path}: no such file`);
    }
    throw e;
  }
}

async function writeOutput(path: string, bytes: Uint8Array, io: BackupIo): Promise<void> {
  if (path === "-") return await io.stdout(bytes);
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeFile(tmp, bytes, { mode: 0o600 });
    await Deno.chmod(tmp, 0o600);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    if (e instanceof Deno.errors.NotCapable) throw sandboxError(path, "write", "--to");
    if (e instanceof Deno.errors.NotFound) {
      throw new ApiError("validation_failed", `--to ${path}: ${dirname(path)} does not exist`);
    }
    throw e;
  }
}

/**
 * Runs `otherix-api <command> ARGS…`.
 *
 * @returns the exit code: 0 done, 1 failed (message on stderr), 2 bad usage
 */
export async function runBackupCommand(
  command: (typeof BACKUP_COMMANDS)[number],
  args: string[],
  io: BackupIo = defaultIo,
): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: "string" },
        to: { type: "string" },
        from: { type: "string" },
        "without-ca": { type: "boolean" },
        "ca-from": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
    if (values.help) {
      io.out(BACKUP_USAGE);
      return 0;
    }
    const allowed = command === "backup"
      ? ["config", "to", "without-ca"]
      : ["config", "from", "ca-from"];
    const extra = Object.keys(values).find((k) => !allowed.includes(k));
    if (extra) throw new Error(`--${extra} is not an option of ${command}`);
    const needed = command === "backup" ? "to" : "from";
    if (typeof values[needed] !== "string" || values[needed] === "") {
      throw new Error(
        `--${needed} FILE is required (- for ${needed === "to" ? "stdout" : "stdin"})`,
      );
    }
  } catch (e) {
    io.err(`otherix-api ${command}: ${(e as Error).message}\n\n${BACKUP_USAGE}`);
    return 2;
  }
  try {
    const cfg = await loadApiConfig((values.config as string) ?? DEFAULT_API_CONFIG_FILE);
    const dataDir = cfg.store.data_dir;
    const etcd = cfg.store.backend === "etcd" && !cfg.store.etcd.endpoints.length;
    if (command === "backup") {
      const withCa = !values["without-ca"];
      const opts = { withCa, hostname: io.hostname() };
      const { bytes, header } = etcd
        ? await createEtcdBackup(cfg, opts)
        : await createBackup(dataDir, opts);
      const to = values.to as string;
      await writeOutput(to, bytes, io);
      io.err(
        `backup: ${header.keys} keys at store revision ${header.revision}, CA material ` +
          `${header.ca_material} (${header.ca_fingerprint ?? "no CA"}) -> ` +
          `${to === "-" ? "stdout" : to}`,
      );
      return 0;
    }
    const from = values.from as string;
    const backup = await decodeBackup(
      await readInput(from, "--from", io),
      from === "-" ? "stdin" : from,
    );
    const caFromPath = values["ca-from"] as string | undefined;
    const caFrom = caFromPath === undefined
      ? undefined
      : await decodeBackup(await readInput(caFromPath, "--ca-from", io), caFromPath);
    const res = etcd
      ? await restoreEtcdBackup(backup, cfg, createLogger("api", cfg.log.level))
      : await restoreBackup(backup, dataDir, { caFrom });
    io.out(
      `restored ${res.keys} keys at store revision ${res.revision} into ${res.dataDir} ` +
        `(CA ${res.caFingerprint ?? "none"}; backup taken ${backup.header.created_at} on ` +
        `${backup.header.source.hostname}); start otherix-api with this config`,
    );
    return 0;
  } catch (e) {
    if (e instanceof ConfigError) {
      io.err(`otherix-api ${command}: ${e.message}`);
      return 1;
    }
    if (e instanceof ApiError) {
      io.err(`otherix-api ${command}: ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
