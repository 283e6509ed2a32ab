/**
 * `otherix pool list|get|create|delete|scan` (spec 003 "Storage pools"; spec 001 "Storage
 * pools", "VM placement scheduler"; contract in shared/api/pools.ts).
 *
 * - `list`: one row per instance, `NAME NODE TYPE PATH AVAILABLE STATUS DEFAULT AGE`
 *   (`--show-ids` adds ID first). AVAILABLE gains `(effective N free)` when VMs placed there
 *   are not yet observed by a scan; STATUS is the reconciliation status, `under_pressure` for
 *   a ready instance under disk pressure.
 * - `get NAME` prints the aggregated view (every instance, `is_cluster_default`); `get UUID`
 *   the flat instance view with the agent-reported detail (available bytes, disk pressure,
 *   reconciliation status, last scan, cached images as `name (sha <12 hex>, size)`).
 *   `get NAME -o yaml` prints apply-ready StoragePool manifests (spec 003: "the YAML form
 *   projects an apply-ready manifest"; cli/manifests/pool_kind.ts), `-o json` the raw view.
 * - `create NAME --node N --path P [--type local_dir] [--wait]` prints
 *   `pool <name> created on node <node>` with `type:` and `path:`; `--wait` polls until the
 *   agent reports `ready` (`pool <name> ready on node <node>`) or `failed` (exit 1), 60 s.
 * - `delete NAME|UUID [--node N] [--force]` prints `pool <name> deleted`; `--force` only skips
 *   the confirmation (pools have no force-delete: VM disks always block deletion).
 * - `scan NAME|UUID [--node N] [--wait]` queues a scan of each instance
 *   (`pool <name> scan on node <node> task=<id> status=<status>`); `--wait` waits for each and
 *   prints what it found.
 *
 * @module
 */
import { type Command, Option } from "commander";
import {
  isUuid,
  type Pool,
  type PoolCreateRequestInput,
  type PoolInstanceView,
  PoolInstanceViewSchema,
  PoolScansSchema,
  PoolSchema,
  PoolTypeSchema,
} from "../../shared/api/pools.ts";
import type { PressureCondition } from "../../shared/api/nodes.ts";
import { POOL_CREATE_WAIT_SECONDS } from "../../shared/constants.ts";
import { isErrorCode } from "../../shared/errors.ts";
import type { ApiClient } from "../client.ts";
import {
  connect,
  outputOption,
  parseIntArg,
  printList,
  seg,
  waitTimeoutOption,
} from "../common.ts";
import { formatAge } from "../duration.ts";
import { ApiCallError, CliError, UsageError, WaitTimeoutError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import {
  formatBytes,
  type KvEntry,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderTable,
} from "../render.ts";
import { waitForTask } from "../wait.ts";
import { projectPool } from "../manifests/pool_kind.ts";
import { renderManifests } from "../manifests/render.ts";

/** A pool instance the agent reported `failed` while `create --wait` waited. */
class PoolFailedError extends CliError {
  constructor(message: string) {
    super(message);
    this.name = "PoolFailedError";
  }

  render(): string {
    return `error: ${this.message}`;
  }
}

/**
 * The AVAILABLE cell: free bytes, with `(effective N free)` when pending VM disks make the
 * effective figure differ; `-` before the agent reported any.
 */
export function availableText(p: PoolInstanceView): string {
  if (p.available_bytes === null) return "-";
  const eff = p.effective_available_bytes;
  return formatBytes(p.available_bytes) +
    (eff !== null && eff !== p.available_bytes ? ` (effective ${formatBytes(eff)} free)` : "");
}

/** The STATUS cell: the reconciliation status; `under_pressure` when ready under disk pressure. */
export function poolStatusText(p: PoolInstanceView): string {
  return p.status === "ready" && p.pressure?.disk.under_pressure ? "under_pressure" : p.status;
}

/** The `pool list` table (spec columns; `showIds` puts the instance ID first). */
export function poolTable(
  pools: PoolInstanceView[],
  now: number,
  showIds = false,
  wide = false,
): string {
  const headers = ["name", "node", "type", "path", "available", "status", "default", "age"];
  if (wide) headers.push("total", "images", "vm_disks");
  if (showIds) headers.unshift("id");
  return renderTable(
    headers,
    pools.map((p) => {
      const row = [
        p.name,
        p.node,
        p.type,
        p.path,
        availableText(p),
        poolStatusText(p),
        p.is_default ? "yes" : "",
        formatAge(p.created_at, now),
      ];
      if (wide) {
        row.push(
          p.total_bytes === null ? "-" : formatBytes(p.total_bytes),
          String(p.images_total),
          p.last_scan ? String(p.last_scan.vm_disk_count) : "-",
        );
      }
      if (showIds) row.unshift(p.id);
      return row;
    }),
  );
}

/** An image as the spec shows it: `name (sha 7f3c1a9b0e2d, 612.0MiB)`. */
function imageLine(i: PoolInstanceView["images"][number]): string {
  return `${i.basename} (sha ${i.sha256.slice(0, 12)}, ${formatBytes(i.size_bytes)})`;
}

/** A pressure condition: `ok (80.0% free)` or `under pressure since <t> (10.0% free)`. */
function condition(c: PressureCondition): string {
  const free = c.available_percent === null ? "" : ` (${c.available_percent}% free)`;
  return c.under_pressure ? `under pressure since ${c.since}${free}` : `ok${free}`;
}

/** A YAML-style list under `key:` (`  - first line` then the rest indented under it). */
function listBlock(key: string, items: string[]): string {
  if (items.length === 0) return `${key}: []\n`;
  return `${key}:\n` + items.map((item) => {
    const [first, ...rest] = item.replace(/\n$/, "").split("\n");
    return `  - ${first}\n` + rest.map((l) => `    ${l}\n`).join("");
  }).join("");
}

/**
 * The flat instance view (`pool get <uuid>`, spec 001): identity, `available_bytes`,
 * `is_cluster_default`, then the agent-reported detail: reconciliation status, pressure, the
 * last scan and the cached images.
 */
export function instanceText(p: PoolInstanceView, now: number): string {
  const scan = p.last_scan;
  const head: KvEntry[] = [
    ["id", p.id],
    ["name", p.name],
    ["node", p.node],
    ["type", p.type],
    ["path", p.path],
    ["available_bytes", availableText(p)],
    ["is_cluster_default", String(p.is_default)],
    ["status", p.status],
    ["message", p.message],
    ["total_bytes", p.total_bytes === null ? null : formatBytes(p.total_bytes)],
    [
      "pending_vm_disks",
      p.pending_vm_disk_bytes > 0 ? formatBytes(p.pending_vm_disk_bytes) : null,
    ],
    ["pressure", p.pressure ? [["disk", condition(p.pressure.disk)]] : null],
    [
      "last_scan",
      scan
        ? [
          ["scanned_at", `${scan.scanned_at} (${formatAge(scan.scanned_at, now)} ago)`],
          ["vm_disks", `${scan.vm_disk_count} (${formatBytes(scan.vm_disk_bytes)})`],
          ["images", `${scan.image_count} (${formatBytes(scan.image_bytes)})`],
        ]
        : null,
    ],
    [
      "last_scan_error",
      p.last_scan_error
        ? `${p.last_scan_error.code}: ${p.last_scan_error.message} (${p.last_scan_error.at})`
        : null,
    ],
  ];
  const tail: KvEntry[] = [["created_at", p.created_at], ["updated_at", p.updated_at]];
  const more = p.images_total - p.images.length;
  const lines = p.images.map(imageLine);
  if (more > 0) lines.push(`… and ${more} more (the first ${p.images.length} by name are listed)`);
  return renderKeyValues(head) + listBlock("images", lines) + renderKeyValues(tail);
}

/** The aggregated view (`pool get <name>`, spec 001): the pool, then each instance. */
export function poolText(pool: Pool): string {
  const head = renderKeyValues([
    ["name", pool.name],
    ["type", pool.type],
    ["is_cluster_default", String(pool.is_cluster_default)],
  ]);
  return head + listBlock(
    "instances",
    pool.instances.map((i) =>
      renderKeyValues([
        ["node", i.node],
        ["id", i.id],
        ["path", i.path],
        ["available", availableText(i)],
        ["status", poolStatusText(i)],
        ["message", i.message],
      ])
    ),
  );
}

/** Waits until instance `id` is `ready` or `failed` (polls every 500 ms, up to `seconds`). */
async function waitReady(
  client: ApiClient,
  io: Io,
  id: string,
  seconds: number,
): Promise<PoolInstanceView> {
  const deadline = io.now() + seconds * 1000;
  for (;;) {
    const { data } = await client.json("GET", `/v1/pools/${seg(id)}`, PoolInstanceViewSchema);
    if (data.status !== "pending") return data;
    const left = deadline - io.now();
    if (left <= 0) {
      throw new WaitTimeoutError(
        `timed out after ${seconds}s waiting for pool ${data.name} on node ${data.node} ` +
          `(still pending); check with 'otherix pool get ${id}'`,
      );
    }
    await io.sleep(Math.min(500, left));
  }
}

/** The error of a failed instance: `api_error: <code>: …` when the message names a code. */
function failure(p: PoolInstanceView): CliError {
  const message = p.message ?? "no reason given";
  const code = message.split(":")[0];
  const text = `pool ${p.name} failed on node ${p.node}: ${message}`;
  return isErrorCode(code)
    ? new ApiCallError(
      code,
      `pool ${p.name} failed on node ${p.node}: ${message.slice(code.length + 2)}`,
    )
    : new PoolFailedError(text);
}

/** Registers `pool` and its subcommands on `program`. */
export function registerPoolCommands(program: Command, io: Io): void {
  const pool = program.command("pool").description("manage storage pools");

  pool.command("list")
    .description("list pool instances (one row per node)")
    .option("--node <name|uuid>", "only instances on this node")
    .addOption(
      new Option("--type <type>", "only pools of this type").choices(PoolTypeSchema.options),
    )
    .option("--show-ids", "add an ID column (instance UUIDs)")
    .option(
      "--limit <n>",
      "one page of at most N instances (with --cursor for the next)",
      parseIntArg,
    )
    .option("--cursor <cursor>", "continue a paged listing")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds TOTAL, IMAGES, VM_DISKS)")
        .choices(["table", "wide", "text", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      await printList(await connect(cmd, io), io, {
        path: "/v1/pools",
        item: PoolInstanceViewSchema,
        filters: { node: opts.node, type: opts.type },
        limit: opts.limit,
        cursor: opts.cursor,
        format: opts.output,
        table: (items) => poolTable(items, io.now(), opts.showIds, opts.output === "wide"),
      });
    });

  pool.command("get")
    .description("show a pool by name (every instance) or one instance by UUID")
    .argument("<name|uuid>", "pool name, or a pool instance UUID")
    .addOption(outputOption("text"))
    .action(async (ref: string, opts, cmd: Command) => {
      const path = `/v1/pools/${seg(ref)}`;
      const client = await connect(cmd, io);
      const format = opts.output as OutputFormat;
      if (isUuid(ref)) {
        const { data, raw } = await client.json("GET", path, PoolInstanceViewSchema);
        return io.out(
          renderAs(
            format,
            raw,
            () =>
              format === "table" ? poolTable([data], io.now(), true) : instanceText(data, io.now()),
          ),
        );
      }
      const { data, raw } = await client.json("GET", path, PoolSchema);
      if (format === "yaml") return io.out(renderManifests(projectPool(data)));
      io.out(
        renderAs(
          format,
          raw,
          () => format === "table" ? poolTable(data.instances, io.now()) : poolText(data),
        ),
      );
    });

  pool.command("create")
    .description("register a pool instance on one node (admin)")
    .argument("<name>", "pool name (DNS label)")
    .requiredOption("--node <name>", "the owning node's name (a UUID is refused)")
    .requiredOption("--path <path>", "absolute directory on that node")
    .addOption(
      new Option("--type <type>", "pool type").choices(PoolTypeSchema.options).default("local_dir"),
    )
    .option("--wait", `poll until the agent reports ready or failed (${POOL_CREATE_WAIT_SECONDS}s)`)
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (name: string, opts, cmd: Command) => {
      const body: PoolCreateRequestInput = {
        name,
        node: opts.node,
        path: opts.path,
        type: opts.type,
      };
      const client = await connect(cmd, io);
      const created = await client.json("POST", "/v1/pools", PoolInstanceViewSchema, { body });
      const format = opts.output as OutputFormat;
      let p = created.data;
      if (format === "text") {
        io.out(`pool ${p.name} created on node ${p.node}\ntype: ${p.type}\npath: ${p.path}\n`);
      }
      let raw = created.raw;
      if (opts.wait) {
        p = await waitReady(client, io, p.id, POOL_CREATE_WAIT_SECONDS);
        raw = p;
        if (p.status === "failed") throw failure(p);
        if (format === "text") io.out(`pool ${p.name} ready on node ${p.node}\n`);
      }
      if (format !== "text") io.out(renderAs(format, raw, String));
    });

  pool.command("delete")
    .description("delete one pool instance (asks for confirmation unless --force)")
    .argument("<name|uuid>", "pool name (with --node when it is on several nodes) or instance UUID")
    .option("--node <name>", "the instance on this node")
    .option(
      "--force",
      "do not ask for confirmation (VM disks on the pool still block the deletion)",
    )
    .action(async (ref: string, opts, cmd: Command) => {
      const path = `/v1/pools/${seg(ref)}`; // a bad name fails before the prompt
      const what = `pool "${ref}"${opts.node ? ` on node "${opts.node}"` : ""}`;
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to delete ${what} without confirmation: stdin is not a terminal` +
              ` (pass --force)`,
          );
        }
        if (!(await confirm(io.prompter, `Delete ${what}?`))) {
          throw new UsageError(`aborted: ${what} was not deleted`);
        }
      }
      const client = await connect(cmd, io);
      const { data } = await client.json("DELETE", path, PoolInstanceViewSchema, {
        query: { node: opts.node },
      });
      io.out(`pool ${data.name} deleted\n`);
    });

  pool.command("scan")
    .description("refresh a pool's free space, VM disks and image cache now (admin)")
    .argument("<name|uuid>", "pool name (every instance, or --node) or instance UUID")
    .option("--node <name>", "only the instance on this node")
    .option("--wait", "wait for the scans and print what they found")
    .addOption(waitTimeoutOption())
    .action(async (ref: string, opts, cmd: Command) => {
      const path = `/v1/pools/${seg(ref)}/scan`;
      const client = await connect(cmd, io);
      const { data } = await client.json("POST", path, PoolScansSchema, {
        query: { node: opts.node },
      });
      for (const { node, task } of data.items) {
        io.out(
          `pool ${task.resource.name} scan on node ${node} task=${task.id} status=${task.status}\n`,
        );
      }
      if (!opts.wait) return;
      for (const { node, id, task } of data.items) {
        const done = await waitForTask(client, io, task.id, {
          timeoutSeconds: opts.waitTimeout,
          hint: `check with 'otherix pool get ${id}'`,
        });
        if (done.task.status === "failed") {
          const e = done.task.error ?? { code: "pool_scan_failed", message: "scan failed" };
          throw new ApiCallError(e.code, e.message, e.details);
        }
        const p = (await client.json("GET", `/v1/pools/${seg(id)}`, PoolInstanceViewSchema)).data;
        const s = p.last_scan;
        io.out(
          `pool ${p.name} on node ${node} scanned: ${availableText(p)} available` +
            (s
              ? ` of ${formatBytes(s.total_bytes)} (vm disks: ${s.vm_disk_count}, ` +
                `${formatBytes(s.vm_disk_bytes)}; images: ${s.image_count}, ` +
                `${formatBytes(s.image_bytes)})`
              : "") +
            "\n",
        );
      }
    });
}
