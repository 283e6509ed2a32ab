/**
 * `otherix node list|get|cordon|uncordon|delete` and `otherix node join-token create` (spec:
 * "Nodes", "Step 1 — run seed-dev").
 *
 * @module
 */
import { type Command, Option } from "commander";
import { z } from "zod";
import { ArchitectureSchema } from "../../shared/api/common.ts";
import {
  type Node,
  NodePingSchema,
  NodeSchema,
  NodeStatusSchema,
  type PressureCondition,
} from "../../shared/api/nodes.ts";
import { connect, outputOption, parseIntArg, printList, seg } from "../common.ts";
import { registerJoinTokenCommands } from "./join_token.ts";
import { UsageError } from "../errors.ts";
import { confirm } from "../prompt.ts";
import { formatAge } from "../duration.ts";
import type { Io } from "../io.ts";
import {
  formatBytes,
  type KvEntry,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderOne,
  renderTable,
  yesNo,
} from "../render.ts";

function heartbeat(at: string | null, now: number): string {
  return at ? `${formatAge(at, now)} ago` : "never";
}

/**
 * `node list` columns (spec "Nodes": NAME ARCHITECTURE STATUS CORDONED LAST_HEARTBEAT AGE);
 * `wide` adds ACCELERATOR, VMS and ENDPOINT; `showIds` puts ID first.
 */
function nodeTable(nodes: Node[], now: number, opts: { wide?: boolean; showIds?: boolean } = {}) {
  const headers = ["name", "architecture", "status", "cordoned", "last_heartbeat", "age"];
  if (opts.wide) headers.push("accelerator", "vms", "endpoint");
  if (opts.showIds) headers.unshift("id");
  return renderTable(
    headers,
    nodes.map((n) => {
      const row = [
        n.name,
        n.architecture ?? "-",
        statusColumn(n),
        yesNo(n.cordoned),
        heartbeat(n.last_heartbeat_at, now),
        formatAge(n.created_at, now),
      ];
      if (opts.wide) row.push(n.accelerator ?? "-", String(n.vm_count), n.endpoint ?? "-");
      if (opts.showIds) row.unshift(n.id);
      return row;
    }),
  );
}

/**
 * The STATUS column (spec 001): a ready node under memory or system-disk pressure shows
 * `under_pressure`, and `cordoned, under_pressure` when it is also cordoned; other statuses
 * show as they are.
 */
export function statusColumn(n: Node): string {
  const pressured = !!n.pressure &&
    (n.pressure.memory.under_pressure || n.pressure.system_disk.under_pressure);
  if (n.status !== "ready" || !pressured) return n.status;
  return n.cordoned ? "cordoned, under_pressure" : "under_pressure";
}

function condition(c: PressureCondition): string {
  const free = c.available_percent === null ? "" : ` (${c.available_percent}% free)`;
  return c.under_pressure ? `under pressure since ${c.since}${free}` : `ok${free}`;
}

/** A `--flag` value checked against `schema` (a usage error names the allowed values). */
function enumArg<T extends z.ZodEnum>(schema: T, flag: string) {
  return (value: string): z.infer<T> => {
    const r = schema.safeParse(value);
    if (!r.success) {
      throw new UsageError(`${flag}: must be one of ${schema.options.join(", ")}`);
    }
    return r.data;
  };
}

/**
 * `key: value` view of a node in the spec's layout (spec 001 "Nodes" / "VM placement"):
 * identity and status first, then `hardware:` (CPU and memory used by VMs out of the totals,
 * system disk), `agent:` (version, endpoint, last heartbeat with its age) and `pressure:`.
 * Fields the server left out of the reduced projection (developer, viewer) are omitted.
 */
export function nodeKeyValues(n: Node, now: number): KvEntry[] {
  const r = n.resources;
  const hardware: KvEntry[] | null = r
    ? [
      [
        "cpu_cores",
        n.allocated_vcpus !== null
          ? `used ${n.allocated_vcpus}/${r.cpu_cores_total} cores`
          : `${r.cpu_cores_total} cores`,
      ],
      [
        "memory",
        n.allocated_memory_mib !== null
          ? `used ${n.allocated_memory_mib}/${r.memory_total_mib} MiB ` +
            `(${r.memory_available_mib} MiB available)`
          : `${r.memory_total_mib} MiB`,
      ],
      [
        "system_disk",
        `${formatBytes(r.system_disk_available_bytes)} free of ${
          formatBytes(r.system_disk_total_bytes)
        }`,
      ],
      ["load_average_1m", r.load_average_1m],
      ["accelerator", n.accelerator],
    ]
    : null;
  return [
    ["name", n.name],
    ["id", n.id],
    ["architecture", n.architecture],
    ["status", statusColumn(n)],
    ["cordoned", yesNo(n.cordoned)],
    ["migration_host", n.migration_host],
    ["migration_port_range", n.migration_port_range],
    ["vm_count", n.vm_count],
    ["hardware", hardware],
    [
      "agent",
      [
        ["version", n.agent_version],
        ["endpoint", n.endpoint],
        [
          "last_heartbeat_at",
          n.last_heartbeat_at
            ? `${n.last_heartbeat_at} (${heartbeat(n.last_heartbeat_at, now)})`
            : "never",
        ],
      ],
    ],
    [
      "pressure",
      n.pressure
        ? [
          ["memory", condition(n.pressure.memory)],
          ["system_disk", condition(n.pressure.system_disk)],
        ]
        : null,
    ],
    ["created_at", n.created_at],
    ["updated_at", n.updated_at],
  ];
}

/** Registers `node` and its subcommands on `program`. */
export function registerNodeCommands(program: Command, io: Io): void {
  const node = program.command("node").description("inspect nodes and mint join tokens");

  node.command("list")
    .description("list nodes")
    .option(
      "--architecture <arch>",
      "only nodes of this architecture (amd64, arm64)",
      enumArg(
        ArchitectureSchema,
        "--architecture",
      ),
    )
    .option(
      "--status <status>",
      "only nodes in this status (pending, ready, unreachable, gone)",
      enumArg(
        NodeStatusSchema,
        "--status",
      ),
    )
    .option("--show-ids", "add an ID column")
    .option("--limit <n>", "one page of at most N nodes (with --cursor for the next)", parseIntArg)
    .option("--cursor <cursor>", "continue a paged listing")
    .addOption(
      new Option("-o, --output <format>", "output format")
        .choices(["table", "wide", "text", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const format = opts.output as OutputFormat | "wide";
      await printList(await connect(cmd, io), io, {
        path: "/v1/nodes",
        item: NodeSchema,
        filters: { architecture: opts.architecture, status: opts.status },
        limit: opts.limit,
        cursor: opts.cursor,
        format,
        table: (items: Node[]) =>
          nodeTable(items, io.now(), { wide: format === "wide", showIds: opts.showIds }),
      });
    });

  for (const [verb, what] of [["cordon", "take no new VMs"], ["uncordon", "take VMs again"]]) {
    node.command(verb)
      .description(`mark a node to ${what} (running VMs are not touched)`)
      .argument("<name>", "node name")
      .action(async (name: string, _opts, cmd: Command) => {
        const client = await connect(cmd, io);
        const { data } = await client.json("POST", `/v1/nodes/${seg(name)}/${verb}`, NodeSchema);
        io.out(`node ${data.name} ${data.cordoned ? "cordoned" : "uncordoned"}\n`);
      });
  }

  node.command("ping")
    .description("round trip from the control plane to the node's agent over mTLS")
    .argument("<name>", "node name")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (name: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json(
        "POST",
        `/v1/nodes/${seg(name)}/ping`,
        NodePingSchema,
      );
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") return io.out(renderAs(format, raw, String));
      io.out(
        `node ${data.node} answered in ${data.rtt_ms.toFixed(1)} ms ` +
          `(agent ${data.agent_version ?? "unknown"}, ${data.endpoint})\n`,
      );
    });

  node.command("delete")
    .description("remove a node from the cluster (refused while VMs live there)")
    .argument("<name>", "node name")
    .option(
      "--force",
      "delete even though VMs live there (they are marked lost); skips the confirmation",
    )
    .action(async (name: string, opts, cmd: Command) => {
      const path = `/v1/nodes/${seg(name)}`; // a bad name fails before the prompt
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to delete node "${name}" without confirmation: stdin is not a terminal` +
              ` (pass --force)`,
          );
        }
        if (!(await confirm(io.prompter, `Delete node "${name}"?`))) {
          throw new UsageError(`aborted: node "${name}" was not deleted`);
        }
      }
      const client = await connect(cmd, io);
      await client.text("DELETE", path, {
        query: opts.force ? { force: "true" } : {},
      });
      io.out(`node ${name} deleted\n`);
    });

  node.command("get")
    .description("show one node")
    .argument("<name>", "node name")
    .addOption(outputOption("text"))
    .action(async (name: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", `/v1/nodes/${seg(name)}`, NodeSchema);
      const format = opts.output as OutputFormat;
      io.out(renderOne(
        format,
        raw,
        () => nodeTable([data], io.now()),
        () => renderKeyValues(nodeKeyValues(data, io.now())),
      ));
    });

  registerJoinTokenCommands(node, io);
}
