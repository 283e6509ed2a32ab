/**
 * `otherix cluster get-default-pool | set-default-pool NAME | unset-default-pool [--force]`
 * (spec 001 "Cluster configuration", "Cluster default-pool configuration"), and the
 * control-plane replicas of HA on etcd (issue 11): `cluster members [-o wide|json|yaml]`,
 * `cluster join-token create [--ttl D]`, `cluster remove-member NAME [--force]`. Contracts in
 * shared/api/cluster.ts. The default-pool lines are the spec's:
 *
 * - `default-pool: default`, or, when none is set (exit 0):
 *   `no default pool configured (run 'otherix cluster set-default-pool <name>' to configure)`;
 * - `default pool set to 'fast-ssd'` (the name as the server stored it: lowercase);
 * - `default pool cleared` (asks for confirmation unless `--force`).
 *
 * @module
 */
import type { Command } from "commander";
import {
  ClusterDefaultPoolSchema,
  ClusterJoinTokenSchema,
  type ClusterMember,
  ClusterMembersSchema,
} from "../../shared/api/cluster.ts";
import { connect, outputOption, parseDurationArg } from "../common.ts";
import { Option } from "commander";
import { UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import { type OutputFormat, renderAs, renderKeyValues, renderTable } from "../render.ts";
import { formatAge } from "../duration.ts";

/** The informational line printed when no default pool is configured. */
export const NO_DEFAULT_POOL =
  "no default pool configured (run 'otherix cluster set-default-pool <name>' to configure)";

const PATH = "/v1/cluster/default-pool";

/** Registers `cluster` and its subcommands on `program`. */
export function registerClusterCommands(program: Command, io: Io): void {
  const cluster = program.command("cluster").description("cluster-wide configuration");

  cluster.command("get-default-pool")
    .description("show the cluster default pool (the pool vm create uses without --pool)")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", PATH, ClusterDefaultPoolSchema);
      io.out(
        renderAs(
          opts.output as OutputFormat,
          raw,
          () =>
            data.default_pool_name === null
              ? `${NO_DEFAULT_POOL}\n`
              : `default-pool: ${data.default_pool_name}\n`,
        ),
      );
    });

  cluster.command("set-default-pool")
    .description("make a pool (by NAME, any case) the cluster default pool (admin)")
    .argument("<name>", "pool name")
    .action(async (name: string, _opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data } = await client.json("PUT", PATH, ClusterDefaultPoolSchema, {
        body: { name },
      });
      io.out(`default pool set to '${data.default_pool_name}'\n`);
    });

  cluster.command("unset-default-pool")
    .description("clear the cluster default pool (asks for confirmation unless --force; admin)")
    .option("--force", "do not ask for confirmation")
    .action(async (opts, cmd: Command) => {
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            "refusing to clear the cluster default pool without confirmation: stdin is not a " +
              "terminal (pass --force)",
          );
        }
        const question = "Clear the cluster default pool? vm create without --pool will fail";
        if (!(await confirm(io.prompter, question))) {
          throw new UsageError("aborted: the cluster default pool was not cleared");
        }
      }
      const client = await connect(cmd, io);
      await client.json("DELETE", PATH, ClusterDefaultPoolSchema);
      io.out("default pool cleared\n");
    });

  registerMemberCommands(cluster, io);
}

/**
 * The `cluster members` table: NAME ROLE LEADER HEALTH API (wide: ID, AGENT, PEER, CLIENT,
 * WAITING, ERROR). A learner waiting for promotion shows how long in HEALTH's place when
 * healthy (spec 000: "Joiner registered as learner but never becomes a voter").
 */
export function membersTable(members: ClusterMember[], now: number, wide = false): string {
  const headers = ["name", "role", "leader", "health", "api"];
  return renderTable(
    wide ? [...headers, "id", "agent", "peer", "client", "waiting", "error"] : headers,
    members.map((m) => {
      const row = [
        m.name,
        m.role,
        m.is_leader ? "yes" : "no",
        m.healthy ? "healthy" : "unhealthy",
        m.api_url ?? "-",
      ];
      if (!wide) return row;
      return [
        ...row,
        m.id ?? "-",
        m.agent_url ?? "-",
        m.peer_urls.join(",") || "-",
        m.client_urls.join(",") || "-",
        m.learner_since ? formatAge(m.learner_since, now) : "-",
        m.error ?? "-",
      ];
    }),
  );
}

function registerMemberCommands(cluster: Command, io: Io): void {
  cluster.command("members")
    .description("the control plane's store members: voters, learners, health, the leader")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: ids, URLs, errors)")
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", "/v1/cluster/members", ClusterMembersSchema);
      io.out(
        renderAs(
          opts.output as OutputFormat,
          raw,
          () =>
            `store: ${data.backend}; controllers led by ${data.controller_leader ?? "(none)"}\n` +
            membersTable(data.members, io.now(), opts.output === "wide"),
        ),
      );
    });

  const joinToken = cluster.command("join-token")
    .description("control-plane join tokens (a further replica joins with one)");
  joinToken.command("create")
    .description("mint a single-use token for otherix-api join (admin; store.backend: etcd)")
    .option(
      "--ttl <duration>",
      "token lifetime, e.g. 30m, 2h (server default 1h)",
      parseDurationArg,
    )
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const body: Record<string, unknown> = {};
      if (opts.ttl !== undefined) body.ttl_seconds = opts.ttl;
      const { data, raw } = await client.json(
        "POST",
        "/v1/cluster/join-tokens",
        ClusterJoinTokenSchema,
        { body },
      );
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") return io.out(renderAs(format, raw, String));
      io.out(renderKeyValues([
        ["token", data.token],
        ["expires_at", data.expires_at],
        ["ca_fingerprint", data.ca_fingerprint],
      ]));
      const server = data.servers[0] ?? "https://<replica>:<agent port>";
      io.out(
        `join a replica (store.backend: etcd, empty data dir) with:\n  otherix-api join ` +
          `--server ${server} --token ${data.token} --ca-fingerprint ${data.ca_fingerprint}\n`,
      );
      io.out("note: the token is shown once and cannot be retrieved again; store it now\n");
    });

  cluster.command("remove-member")
    .description("remove a replica's etcd member (stop that replica first; admin)")
    .argument("<name>", "member name (see cluster members)")
    .option("--force", "do not ask for confirmation")
    .action(async (name: string, opts, cmd: Command) => {
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to remove member ${name} without confirmation: stdin is not a terminal ` +
              "(pass --force)",
          );
        }
        if (!(await confirm(io.prompter, `Remove store member ${name} from the cluster?`))) {
          throw new UsageError(`aborted: member ${name} was not removed`);
        }
      }
      const client = await connect(cmd, io);
      await client.json(
        "DELETE",
        `/v1/cluster/members/${encodeURIComponent(name)}`,
        ClusterMembersSchema,
      );
      io.out(`member ${name} removed\n`);
    });
}
