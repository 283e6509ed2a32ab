/**
 * `otherix pool list` (spec: "Storage pools"): one row per per-node pool instance.
 *
 * @module
 */
import type { Command } from "commander";
import { PoolInstanceSchema } from "../../shared/api/pools.ts";
import { connect, outputOption } from "../common.ts";
import { formatAge } from "../duration.ts";
import type { Io } from "../io.ts";
import { formatBytes, listEnvelope, type OutputFormat, renderAs, renderTable } from "../render.ts";

/** Registers `pool` and its subcommands on `program`. */
export function registerPoolCommands(program: Command, io: Io): void {
  const pool = program.command("pool").description("inspect storage pools");

  pool.command("list")
    .description("list pool instances (one row per node)")
    .addOption(outputOption("table", ["table", "text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll("/v1/pools", PoolInstanceSchema);
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") {
        return io.out(renderAs(format, listEnvelope(raw), String));
      }
      const now = io.now();
      io.out(renderTable(
        ["name", "node", "type", "status", "path", "available", "default", "age"],
        items.map((p) => [
          p.name,
          p.node,
          p.type,
          p.status,
          p.path,
          p.available_bytes === null ? "-" : formatBytes(p.available_bytes),
          p.is_default ? "yes" : "",
          formatAge(p.created_at, now),
        ]),
      ));
    });
}
