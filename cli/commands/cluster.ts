/**
 * `otherix cluster get-default-pool | set-default-pool NAME | unset-default-pool [--force]`
 * (spec 001 "Cluster configuration", "Cluster default-pool configuration"; contract in
 * shared/api/cluster.ts). The lines are the spec's:
 *
 * - `default-pool: default`, or, when none is set (exit 0):
 *   `no default pool configured (run 'otherix cluster set-default-pool <name>' to configure)`;
 * - `default pool set to 'fast-ssd'` (the name as the server stored it: lowercase);
 * - `default pool cleared` (asks for confirmation unless `--force`).
 *
 * @module
 */
import type { Command } from "commander";
import { ClusterDefaultPoolSchema } from "../../shared/api/cluster.ts";
import { connect, outputOption } from "../common.ts";
import { UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import { type OutputFormat, renderAs } from "../render.ts";

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
}
