/**
 * `otherix vm create|list|get|delete|logs` (spec: "otherix vm subcommands", "VM operations
 * with names", "Step 2 — create a VM").
 *
 * @module
 */
import { type Command, Option } from "commander";
import { type Task, TaskSchema } from "../../shared/api/tasks.ts";
import { type Vm, type VmCreateRequestInput, VmSchema } from "../../shared/api/vms.ts";
import { connect, outputOption, parseIntArg, seg, waitTimeoutOption } from "../common.ts";
import { formatAge } from "../duration.ts";
import { ApiCallError, UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import {
  type KvEntry,
  listEnvelope,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderOne,
  renderTable,
} from "../render.ts";
import { waitForTask } from "../wait.ts";

/** Columns of `vm list` (and `vm get -o table`). */
function vmTable(vms: Vm[], showIds: boolean, now: number): string {
  const headers = ["name", "status", "node", "pool", "image", "age"];
  const rows = vms.map((v) => [
    v.name,
    v.status,
    v.node,
    v.pool,
    v.image,
    formatAge(v.created_at, now),
  ]);
  return showIds
    ? renderTable(["id", ...headers], rows.map((r, i) => [vms[i].id, ...r]))
    : renderTable(headers, rows);
}

/** `key: value` view of a VM (spec sample order; unset fields omitted). */
export function vmKeyValues(vm: Vm): KvEntry[] {
  return [
    ["id", vm.id],
    ["name", vm.name],
    ["owner_id", vm.owner_id],
    ["image_url", vm.image_url],
    ["image_sha256", vm.image_sha256],
    ["image", vm.image],
    ["pool", vm.pool],
    ["node", vm.node],
    ["architecture", vm.architecture],
    ["vcpus", vm.vcpus],
    ["memory_mb", vm.memory_mb],
    ["disk_gib", vm.disk_gib],
    ["status", vm.status],
    ["desired_phase", vm.desired_phase],
    ["last_task_id", vm.last_task_id],
    ["error", vm.error ? `${vm.error.code}: ${vm.error.message}` : null],
    ["created_at", vm.created_at],
    ["updated_at", vm.updated_at],
  ];
}

/** Reads `--user-data`: `@path` reads a file, anything else is the content itself. */
async function userDataOf(value: string | undefined, io: Io): Promise<string | undefined> {
  if (value === undefined || !value.startsWith("@")) return value;
  const path = value.slice(1);
  if (path === "") throw new UsageError("--user-data @<file>: missing file name");
  try {
    return await io.readTextFile(path);
  } catch (e) {
    throw new UsageError(`cannot read --user-data file ${path}: ${(e as Error).message}`);
  }
}

/** Registers `vm` and its subcommands on `program`. */
export function registerVmCommands(program: Command, io: Io): void {
  const vm = program.command("vm").description("manage virtual machines");

  vm.command("create")
    .description("create a VM from an image URL (asynchronous; --wait blocks until running)")
    .argument("<name>", "VM name (DNS label)")
    .requiredOption("--image-url <url>", "http(s) URL of the disk image")
    .option("--image-sha256 <hex>", "expected SHA-256 of the image")
    .addOption(
      new Option("--arch <arch>", "guest architecture").choices(["amd64", "arm64"]).default(
        "amd64",
      ),
    )
    .option("--vcpus <n>", "virtual CPUs", parseIntArg)
    .option("--memory-mb <n>", "memory, MiB", parseIntArg)
    .option("--disk-gib <n>", "root disk size, GiB", parseIntArg)
    .option("--user-data <data>", "cloud-init user-data: inline text, or @file to read a file")
    .option("--pool <pool>", "storage pool (default: the cluster default pool)")
    .option("--node <node>", "place the VM on exactly this node")
    .option("--wait", "wait until the VM is running")
    .addOption(waitTimeoutOption())
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (name: string, opts, cmd: Command) => {
      const body: VmCreateRequestInput = {
        name,
        image_url: opts.imageUrl,
        architecture: opts.arch,
      };
      if (opts.imageSha256 !== undefined) body.image_sha256 = opts.imageSha256;
      if (opts.vcpus !== undefined) body.vcpus = opts.vcpus;
      if (opts.memoryMb !== undefined) body.memory_mb = opts.memoryMb;
      if (opts.diskGib !== undefined) body.disk_gib = opts.diskGib;
      const userData = await userDataOf(opts.userData, io);
      if (userData !== undefined) body.user_data = userData;
      if (opts.pool !== undefined) body.pool = opts.pool;
      if (opts.node !== undefined) body.node = opts.node;

      const client = await connect(cmd, io);
      const created = await client.json("POST", "/v1/vms", TaskSchema, { body });
      const format = opts.output as OutputFormat;
      const task = created.data;
      if (!opts.wait) {
        printTask(io, format, created.raw, `created task=${task.id} status=${task.status}\n`);
        return;
      }
      if (format === "text") io.out(`created task=${task.id} status=${task.status}\n`);
      const done = await waitForTask(client, io, task.id, {
        timeoutSeconds: opts.waitTimeout,
        hint: `check with 'otherix vm get ${name}'`,
      });
      finishTask(io, format, done.task, done.raw, `vm running task=${task.id}\n`);
    });

  vm.command("list")
    .description("list VMs")
    .option("--show-ids", "add an ID column")
    .addOption(outputOption("table", ["table", "text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll("/v1/vms", VmSchema);
      const format = opts.output as OutputFormat;
      io.out(
        renderAs(format, listEnvelope(raw), () => vmTable(items, Boolean(opts.showIds), io.now())),
      );
    });

  vm.command("get")
    .description("show one VM")
    .argument("<name>", "VM name")
    .addOption(outputOption("text"))
    .action(async (name: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", `/v1/vms/${seg(name)}`, VmSchema);
      const format = opts.output as OutputFormat;
      io.out(renderOne(
        format,
        raw,
        () => vmTable([data], false, io.now()),
        () => renderKeyValues(vmKeyValues(data)),
      ));
    });

  vm.command("delete")
    .description("delete a VM (asks for confirmation unless --force)")
    .argument("<name>", "VM name")
    .option("--force", "do not ask for confirmation")
    .option("--wait", "wait until the VM is deleted")
    .addOption(waitTimeoutOption())
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (name: string, opts, cmd: Command) => {
      const path = `/v1/vms/${seg(name)}`; // a bad name fails before the prompt
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to delete vm "${name}" without confirmation: stdin is not a terminal` +
              ` (pass --force)`,
          );
        }
        if (!(await confirm(io.prompter, `Delete VM "${name}"?`))) {
          throw new UsageError(`aborted: vm "${name}" was not deleted`);
        }
      }
      const client = await connect(cmd, io);
      const deleted = await client.json("DELETE", path, TaskSchema);
      const format = opts.output as OutputFormat;
      const task = deleted.data;
      if (!opts.wait) {
        printTask(io, format, deleted.raw, `deleted task=${task.id} status=${task.status}\n`);
        return;
      }
      if (format === "text") io.out(`deleted task=${task.id} status=${task.status}\n`);
      const done = await waitForTask(client, io, task.id, {
        timeoutSeconds: opts.waitTimeout,
        hint: `check with 'otherix vm get ${name}'`,
      });
      finishTask(io, format, done.task, done.raw, `vm deleted task=${task.id}\n`);
    });

  vm.command("logs")
    .description("print the tail of the VM's serial console log")
    .argument("<name>", "VM name")
    .option(
      "--tail-bytes <n>",
      "how many trailing bytes to fetch (server default 16 KiB)",
      parseIntArg,
    )
    .action(async (name: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const text = await client.text("GET", `/v1/vms/${seg(name)}/console-log`, {
        query: { tail_bytes: opts.tailBytes },
      });
      io.out(text);
    });
}

function printTask(io: Io, format: OutputFormat, raw: unknown, text: string): void {
  io.out(renderAs(format, raw, () => text));
}

/** Prints the final task; a failed task becomes `api_error: <code>: <message>` (exit 1). */
function finishTask(
  io: Io,
  format: OutputFormat,
  task: Task,
  raw: unknown,
  successText: string,
): void {
  if (format !== "text") io.out(renderAs(format, raw, String));
  if (task.status === "failed") {
    const code = task.error?.code ??
      (task.type === "vm.delete" ? "vm_delete_failed" : "vm_create_failed");
    throw new ApiCallError(
      code,
      task.error?.message ?? "task failed without an error message",
      task.error?.details,
    );
  }
  if (format === "text") io.out(successText);
}
