/**
 * `otherix config add cluster|list|use|show|remove` — the kubectl-style credential store
 * (spec: "CLI configuration").
 *
 * @module
 */
import { type Command, Option } from "commander";
import { ApiTokenCreateResponseSchema, LoginResponseSchema } from "../../shared/api/auth.ts";
import { ApiClient } from "../client.ts";
import { globalsOf, outputOption } from "../common.ts";
import {
  type CliConfig,
  clusterNameProblem,
  findCluster,
  loadConfig,
  notFound,
  removeCluster,
  resolveConfigPath,
  saveConfig,
  serversOf,
  upsertCluster,
  useCluster,
} from "../config_store.ts";
import { parseEndpoints } from "../endpoints.ts";
import { CliError, UsageError } from "../errors.ts";
import { API_TOKEN_PREFIX } from "../../shared/constants.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import {
  maskToken,
  type OutputFormat,
  renderJson,
  renderKeyValues,
  renderTable,
  renderYaml,
} from "../render.ts";
import { SERVER_ENV } from "../resolve.ts";

/** Env var for `config add cluster --login`. */
export const LOGIN_ENV = "OTHERIX_LOGIN";
/** Env var for `config add cluster --password`. */
export const PASSWORD_ENV = "OTHERIX_PASSWORD";

/** Name of the API token `config add cluster` mints: `otherix-cli@<hostname>`. */
export function cliTokenName(hostname: string): string {
  return `otherix-cli@${hostname}`.slice(0, 100);
}

/**
 * Mints this machine's CLI API token with `accessToken` (`otherix-cli@<hostname>`), stores it
 * with the cluster's server list under `o.name` in the config at `path` (replacing an entry of
 * that name; made current unless `o.use` is false) and returns the saved config. Shared by
 * `config add cluster` and `login --oidc`.
 *
 * @throws ApiCallError from the mint; the config file's write errors
 */
export async function storeCluster(
  client: ApiClient,
  io: Io,
  path: string,
  cfg: CliConfig,
  o: { name: string; endpoints: string[]; accessToken: string; description: string; use: boolean },
): Promise<CliConfig> {
  const minted = await client.json(
    "POST",
    "/v1/users/me/api-tokens",
    ApiTokenCreateResponseSchema,
    {
      token: o.accessToken,
      body: { name: cliTokenName(io.hostname()), description: o.description },
    },
  );
  const next = upsertCluster(
    cfg,
    {
      name: o.name,
      server: o.endpoints.length === 1 ? o.endpoints[0] : o.endpoints,
      token: minted.data.plaintext_token,
    },
    { replace: true, use: o.use },
  );
  await saveConfig(path, next);
  return next;
}

function configPathOf(cmd: Command, io: Io): string {
  return resolveConfigPath(globalsOf(cmd).config, (n) => io.env(n));
}

/** One value for `config add cluster`: flag, then env, then a prompt on a terminal. */
interface Field {
  flag: string;
  env?: string;
  prompt: string;
  secret?: boolean;
  value?: string;
}

async function fillFields(fields: Field[], io: Io): Promise<void> {
  for (const f of fields) if (f.value === undefined && f.env) f.value = io.env(f.env);
  const missing = fields.filter((f) => f.value === undefined || f.value === "");
  if (missing.length === 0) return;
  if (!io.stdinIsTerminal()) {
    const names = missing.map((f) => (f.env ? `${f.flag} (or $${f.env})` : f.flag));
    throw new UsageError(
      `missing ${names.join(", ")}: stdin is not a terminal, so they cannot be prompted for`,
    );
  }
  for (const f of missing) {
    const answer = f.secret
      ? await io.prompter.secret(`${f.prompt}: `)
      : await io.prompter.line(`${f.prompt}: `);
    if (answer === null || (f.secret ? answer === "" : answer.trim() === "")) {
      throw new UsageError(`no ${f.flag.replace(/^--/, "")} given`);
    }
    f.value = f.secret ? answer : answer.trim();
  }
}

/** Registers `config` and its subcommands on `program`. */
export function registerConfigCommands(program: Command, io: Io): void {
  const config = program.command("config").description("manage clusters and stored credentials");
  const add = config.command("add").description("add an entry to the config");

  add.command("cluster")
    .description("log in to a cluster and store a long-lived API token for it")
    .option("--name <name>", "name of the cluster entry")
    .option(
      "--server <url>",
      `API server URL, or several comma-separated: replicas of one cluster, tried in order` +
        ` (or $${SERVER_ENV})`,
    )
    .option("--login <email>", `login email (or $${LOGIN_ENV})`)
    .option("--password <password>", `password (or $${PASSWORD_ENV}); never stored`)
    .option("--force", "replace an existing entry with the same name")
    .option("--no-use", "do not make it the current cluster")
    .action(async (opts, cmd: Command) => {
      const path = configPathOf(cmd, io);
      let cfg: CliConfig = await loadConfig(path);
      const name: Field = { flag: "--name", prompt: "Cluster name", value: opts.name };
      const server: Field = {
        flag: "--server",
        env: SERVER_ENV,
        prompt: "Server URL",
        value: opts.server,
      };
      const login: Field = {
        flag: "--login",
        env: LOGIN_ENV,
        prompt: "Login (email)",
        value: opts.login,
      };
      const password: Field = {
        flag: "--password",
        env: PASSWORD_ENV,
        prompt: "Password",
        secret: true,
        value: opts.password,
      };
      await fillFields([name, server, login, password], io);
      const clusterName = name.value!;
      const problem = clusterNameProblem(clusterName);
      if (problem) throw new UsageError(`invalid --name "${clusterName}": ${problem}`);
      const endpoints = parseEndpoints(server.value!);
      if (findCluster(cfg, clusterName) && !opts.force) {
        throw new UsageError(
          `cluster "${clusterName}" already exists in ${path} (use --force to replace it)`,
        );
      }

      const client = new ApiClient({
        endpoint: endpoints,
        timeoutMs: globalsOf(cmd).requestTimeout * 1000,
        fetch: io.fetch,
      });
      const session = await client.json("POST", "/v1/auth/login", LoginResponseSchema, {
        body: { email: login.value, password: password.value },
      });
      cfg = await storeCluster(client, io, path, cfg, {
        name: clusterName,
        endpoints,
        accessToken: session.data.access_token,
        description: `otherix CLI, cluster ${clusterName}`,
        use: opts.use !== false,
      });
      const current = cfg["current-cluster"] === clusterName;
      io.out(
        `cluster added: name=${clusterName} server=${endpoints.join(",")} current=${current}\n`,
      );
    });

  config.command("list")
    .description("list configured clusters")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds the masked TOKEN)")
        .choices(["table", "wide"]).default("table"),
    )
    .action(async (opts: { output: string }, cmd: Command) => {
      const cfg = await loadConfig(configPathOf(cmd, io));
      const wide = opts.output === "wide";
      io.out(renderTable(
        wide ? ["name", "server", "current", "token"] : ["name", "server", "current"],
        cfg.clusters.map((c) => {
          const row = [
            c.name,
            serversOf(c).join(","),
            c.name === cfg["current-cluster"] ? "*" : "",
          ];
          return wide ? [...row, maskToken(c.token)] : row;
        }),
      ));
    });

  config.command("use")
    .description("set the current cluster")
    .argument("<name>", "cluster name")
    .action(async (name: string, _opts, cmd: Command) => {
      const path = configPathOf(cmd, io);
      await saveConfig(path, useCluster(await loadConfig(path), name, path));
      io.out(`current cluster: ${name}\n`);
    });

  config.command("show")
    .description("show a cluster entry (default: --cluster, else the current cluster)")
    .argument("[name]", "cluster name")
    .option("--show-token", "print the token in plain text")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (nameArg: string | undefined, opts, cmd: Command) => {
      const path = configPathOf(cmd, io);
      const cfg = await loadConfig(path);
      const name = nameArg ?? globalsOf(cmd).cluster ?? cfg["current-cluster"];
      if (!name) {
        throw new UsageError(
          `no current cluster in ${path}: name one, or run 'otherix config use <name>'`,
        );
      }
      const entry = findCluster(cfg, name);
      if (!entry) throw notFound(name, path);
      const view = {
        name: entry.name,
        server: serversOf(entry).join(","),
        token: opts.showToken ? entry.token : maskToken(entry.token),
        current: cfg["current-cluster"] === entry.name,
      };
      const format = opts.output as OutputFormat;
      if (format === "json") io.out(renderJson(view));
      else if (format === "yaml") io.out(renderYaml(view));
      else io.out(renderKeyValues(Object.entries(view)));
    });

  config.command("remove")
    .description(
      "remove a cluster entry and revoke its API token on the server (asks for confirmation " +
        "unless --force)",
    )
    .argument("<name>", "cluster name")
    .option("--force", "do not ask for confirmation")
    .option("--no-revoke", "keep the API token valid on the server")
    .action(async (name: string, opts, cmd: Command) => {
      const path = configPathOf(cmd, io);
      const cfg = await loadConfig(path);
      const entry = findCluster(cfg, name);
      if (!entry) throw notFound(name, path);
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to remove cluster "${name}" without confirmation: stdin is not a terminal` +
              ` (pass --force)`,
          );
        }
        if (!(await confirm(io.prompter, `Remove cluster "${name}" from ${path}?`))) {
          throw new UsageError(`aborted: cluster "${name}" was not removed`);
        }
      }
      if (opts.revoke !== false) {
        await revokeStoredToken(
          serversOf(entry),
          entry.token,
          globalsOf(cmd).requestTimeout,
          io,
        );
      }
      await saveConfig(path, removeCluster(cfg, name, path));
      io.out(`cluster removed: ${name}\n`);
    });
}

/** Longest wait for the server when `config remove` revokes a token, seconds. */
export const REVOKE_TIMEOUT_SECONDS = 10;

/**
 * Best effort: revokes the stored API token on its server (`DELETE
 * /v1/users/me/api-tokens/current`, authenticated with the token itself; `server`: the
 * cluster's endpoint or endpoints) and says what happened — `server-side token revoked` on
 * stdout, or a warning on stderr when it could not (the entry is removed either way).
 */
export async function revokeStoredToken(
  server: string | readonly string[],
  token: string,
  timeoutSeconds: number,
  io: Io,
): Promise<void> {
  if (!token.startsWith(API_TOKEN_PREFIX)) {
    io.err("note: the stored credential is not an API token; nothing to revoke on the server\n");
    return;
  }
  const client = new ApiClient({
    endpoint: server,
    token,
    timeoutMs: Math.min(timeoutSeconds, REVOKE_TIMEOUT_SECONDS) * 1000,
    fetch: io.fetch,
  });
  try {
    await client.text("DELETE", "/v1/users/me/api-tokens/current");
    io.out("server-side token revoked\n");
  } catch (e) {
    const why = e instanceof CliError ? e.render() : String((e as Error)?.message ?? e);
    io.err(
      `warning: could not revoke the server-side token (${why}); it stays valid until ` +
        "revoked: run 'otherix token list' and 'otherix token revoke <id>' with another " +
        "credential\n",
    );
  }
}
