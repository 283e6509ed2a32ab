/**
 * `otherix network create|list|get|delete` (issue 8 "Networks"; contract in
 * shared/api/networks.ts; the `Network` kind of spec 001 "Declarative manifests").
 *
 * - `create NAME --type bridge|overlay [--managed] [--bridge-name B] [--mtu N] [--subnet
 *   CIDR] [--gateway IP]` prints `network <name> created` and the network (synchronous: agents
 *   build it when a VM on their node needs it);
 * - `list`: `NAME TYPE MANAGED BRIDGE SUBNET VNI VMS AGE` (`--show-ids` adds ID first);
 * - `get NAME` prints the network; `-o yaml` the apply-ready Network manifest
 *   (cli/manifests/network_kind.ts), `-o json` the raw view;
 * - `delete NAME [--force]` prints `network <name> deleted`; 409 `conflict` while VMs use it
 *   (the message names them); `--force` only skips the confirmation.
 *
 * @module
 */
import { type Command, Option } from "commander";
import {
  type Network,
  type NetworkCreateRequestInput,
  NetworkSchema,
  NetworkTypeSchema,
} from "../../shared/api/networks.ts";
import { connect, outputOption, parseIntArg, seg } from "../common.ts";
import { formatAge } from "../duration.ts";
import { UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import {
  type KvEntry,
  listEnvelope,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderTable,
  yesNo,
} from "../render.ts";
import { projectNetwork } from "../manifests/network_kind.ts";
import { renderManifests } from "../manifests/render.ts";

const COLUMNS = ["name", "type", "managed", "bridge", "subnet", "vni", "vms", "age"];

/** The `network list` table. */
export function networkTable(
  nets: Network[],
  showIds: boolean,
  now: number,
  wide = false,
): string {
  const rows = nets.map((n) => {
    const row = [
      n.name,
      n.type,
      yesNo(n.managed),
      n.bridge_name,
      n.subnet ?? "-",
      n.vni === null ? "-" : String(n.vni),
      String(n.attached_vms),
      formatAge(n.created_at, now),
    ];
    if (wide) row.push(n.gateway ?? "-", n.mtu === null ? "-" : String(n.mtu));
    return showIds ? [n.id, ...row] : row;
  });
  const headers = wide ? [...COLUMNS, "gateway", "mtu"] : COLUMNS;
  return renderTable(showIds ? ["id", ...headers] : headers, rows);
}

/** `key: value` view of a network (unset fields omitted). */
export function networkKeyValues(n: Network): KvEntry[] {
  return [
    ["id", n.id],
    ["name", n.name],
    ["type", n.type],
    ["managed", yesNo(n.managed)],
    ["bridge_name", n.bridge_name],
    ["mtu", n.mtu],
    ["subnet", n.subnet],
    ["gateway", n.gateway],
    ["vni", n.vni],
    ["attached_vms", n.attached_vms],
    [
      "addresses",
      n.addresses ? `used ${n.addresses.used}/${n.addresses.total}` : null,
    ],
    ["created_at", n.created_at],
  ];
}

/** Registers `network` and its subcommands on `program`. */
export function registerNetworkCommands(program: Command, io: Io): void {
  const net = program.command("network").description(
    "manage networks: host bridges, managed bridges, overlays across nodes",
  );

  net.command("create")
    .description("create a network (admin)")
    .argument("<name>", "network name (DNS label)")
    .addOption(
      new Option(
        "--type <type>",
        "bridge: a Linux bridge on each node; overlay: VXLAN across nodes",
      )
        .choices(NetworkTypeSchema.options).makeOptionMandatory(),
    )
    .option("--managed", "bridge: Otherix creates the bridge, with DHCP, DNS and NAT")
    .option("--bridge-name <name>", "bridge: the host bridge to join, or the one to create")
    .option("--mtu <bytes>", "bridge: MTU of the bridge and the NICs", parseIntArg)
    .option(
      "--subnet <cidr>",
      "managed bridge or overlay: IPv4 subnet the VMs' addresses come from (default: a free /24)",
    )
    .option("--gateway <ip>", "managed bridge: the nodes' address in --subnet (default: first)")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (name: string, opts, cmd: Command) => {
      const body: NetworkCreateRequestInput = { name, type: opts.type };
      if (opts.managed) body.managed = true;
      if (opts.bridgeName !== undefined) body.bridge_name = opts.bridgeName;
      if (opts.mtu !== undefined) body.mtu = opts.mtu;
      if (opts.subnet !== undefined) body.subnet = opts.subnet;
      if (opts.gateway !== undefined) body.gateway = opts.gateway;
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("POST", "/v1/networks", NetworkSchema, { body });
      io.out(renderAs(
        opts.output,
        raw,
        () => `network ${data.name} created\n` + renderKeyValues(networkKeyValues(data)),
      ));
    });

  net.command("list")
    .description("list networks")
    .option("--show-ids", "add an ID column")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds GATEWAY, MTU)")
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll("/v1/networks", NetworkSchema);
      io.out(renderAs(
        opts.output,
        listEnvelope(raw),
        () => networkTable(items, Boolean(opts.showIds), io.now(), opts.output === "wide"),
      ));
    });

  net.command("get")
    .description("show one network (-o yaml: its apply-ready manifest)")
    .argument("<name>", "network name")
    .addOption(outputOption("text"))
    .action(async (name: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const format = opts.output as OutputFormat;
      const { data, raw } = await client.json("GET", `/v1/networks/${seg(name)}`, NetworkSchema);
      if (format === "yaml") return io.out(renderManifests([projectNetwork(data)]));
      io.out(renderAs(
        format,
        raw,
        () =>
          format === "table"
            ? networkTable([data], false, io.now())
            : renderKeyValues(networkKeyValues(data)),
      ));
    });

  net.command("delete")
    .description("delete a network no VM uses (admin; asks for confirmation unless --force)")
    .argument("<name>", "network name")
    .option("--force", "do not ask for confirmation (VMs on the network still block it)")
    .action(async (name: string, opts, cmd: Command) => {
      const path = `/v1/networks/${seg(name)}`; // a bad name fails before the prompt
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to delete network "${name}" without confirmation: stdin is not a ` +
              "terminal (pass --force)",
          );
        }
        if (!(await confirm(io.prompter, `Delete network "${name}"?`))) {
          throw new UsageError(`aborted: network "${name}" was not deleted`);
        }
      }
      const client = await connect(cmd, io);
      const { data } = await client.json("DELETE", path, NetworkSchema);
      io.out(`network ${data.name} deleted\n`);
    });
}
