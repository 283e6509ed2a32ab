/**
 * `otherix node list|get` and `otherix node join-token create` (spec: "Nodes", "Step 1 — run
 * seed-dev").
 *
 * @module
 */
import type { Command } from "commander";
import { JoinTokenCreateResponseSchema, type Node, NodeSchema } from "../../shared/api/nodes.ts";
import { connect, outputOption, parseDurationArg, parseIntArg, seg } from "../common.ts";
import { formatAge } from "../duration.ts";
import type { Io } from "../io.ts";
import {
  formatBytes,
  type KvEntry,
  listEnvelope,
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

function nodeTable(nodes: Node[], now: number): string {
  return renderTable(
    ["name", "architecture", "status", "cordoned", "accelerator", "last_heartbeat", "age"],
    nodes.map((n) => [
      n.name,
      n.architecture ?? "-",
      n.status,
      yesNo(n.cordoned),
      n.accelerator ?? "-",
      heartbeat(n.last_heartbeat_at, now),
      formatAge(n.created_at, now),
    ]),
  );
}

/** `key: value` view of a node (unset fields omitted). */
export function nodeKeyValues(n: Node, now: number): KvEntry[] {
  const r = n.resources;
  return [
    ["name", n.name],
    ["id", n.id],
    ["architecture", n.architecture],
    ["status", n.status],
    ["cordoned", yesNo(n.cordoned)],
    ["endpoint", n.endpoint],
    ["accelerator", n.accelerator],
    ["agent_version", n.agent_version],
    ["vm_count", n.vm_count],
    [
      "resources",
      r
        ? [
          ["cpu_cores_total", r.cpu_cores_total],
          ["load_average_1m", r.load_average_1m],
          ["memory_total_mib", r.memory_total_mib],
          ["memory_available_mib", r.memory_available_mib],
          ["system_disk_total", formatBytes(r.system_disk_total_bytes)],
          ["system_disk_available", formatBytes(r.system_disk_available_bytes)],
        ]
        : null,
    ],
    [
      "last_heartbeat_at",
      n.last_heartbeat_at
        ? `${n.last_heartbeat_at} (${heartbeat(n.last_heartbeat_at, now)})`
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
    .addOption(outputOption("table", ["table", "text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll("/v1/nodes", NodeSchema);
      const format = opts.output as OutputFormat;
      io.out(renderAs(format, listEnvelope(raw), () => nodeTable(items, io.now())));
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

  const joinToken = node.command("join-token").description("manage node join tokens");
  joinToken.command("create")
    .description("mint a join token an agent redeems to register as a node")
    .requiredOption("--node-name <name>", "the node name the token may register")
    .option(
      "--ttl <duration>",
      "token lifetime, e.g. 10m, 1h (server default 10m)",
      parseDurationArg,
    )
    .option("--max-uses <n>", "how many agents may redeem it (server default 1)", parseIntArg)
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const body: Record<string, unknown> = { node_name: opts.nodeName };
      if (opts.ttl !== undefined) body.ttl_seconds = opts.ttl;
      if (opts.maxUses !== undefined) body.max_uses = opts.maxUses;
      const { data, raw } = await client.json(
        "POST",
        "/v1/nodes/join-tokens",
        JoinTokenCreateResponseSchema,
        { body },
      );
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") return io.out(renderAs(format, raw, String));
      io.out(renderKeyValues([
        ["token", data.token],
        ["node", data.node_name],
        ["expires_at", data.expires_at],
        ["max_uses", data.max_uses],
        ["ca_fingerprint", data.ca_fingerprint],
      ]));
      io.out("note: the token is shown once and cannot be retrieved again; store it now\n");
    });
}
