/**
 * `otherix vm create|list|get|delete|logs|console` and the lifecycle verbs
 * `start|stop|poweroff|reboot|pause|resume|reset` (spec: "otherix vm subcommands", "VM
 * operations with names", "Step 2 — create a VM", "Step 4 — observe the VM", "Step 5 —
 * console access"; shared/api/vms.ts).
 *
 * Asynchronous commands print their task (`created task=<id> status=pending`,
 * `vm <name> <action> task=<id>`); `--wait` follows the task over the event stream
 * (`wait.ts`) and prints the outcome (`vm running task=…`, `vm <name> stopped task=…`), a
 * failed task being `api_error: <code>: <message>` (exit 1). `list --watch` / `get --watch`
 * print the current state, then one row / object per change (`watch.ts`).
 *
 * Reachability (issue 8): `create --ssh-key` (repeatable, `@FILE` or inline) sends keys the
 * control plane merges into the cloud-config; `create --wait=cloud-init` waits past `running`
 * until cloud-init finished in the guest (`wait_cloud_init.ts`); `get` shows `cloud_init` and
 * each NIC's addresses, `list -o wide` an ADDRESSES column; `ssh` runs the system ssh
 * (`vm_ssh.ts`). `get -o yaml` prints the VM as an apply-ready manifest (spec "Declarative
 * manifests"; `-o json` stays the raw view).
 *
 * How VMs print, and the plain `vm list` / `vm get` steps, live in `vm_view.ts`: the start-up
 * fast path (`fast_path.ts`) runs them without building this command tree.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { type Task, TaskSchema, type VmAction } from "../../shared/api/tasks.ts";
import {
  RestartPolicySchema,
  type Vm,
  type VmCreateRequestInput,
  VmSchema,
} from "../../shared/api/vms.ts";
import type { ApiClient } from "../client.ts";
import {
  connect,
  globalsOf,
  outputOption,
  parseDurationArg,
  parseIntArg,
  seg,
  waitTimeoutOption,
} from "../common.ts";
import { ApiCallError, UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import {
  listEnvelope,
  type OutputFormat,
  renderAs,
  renderJson,
  renderKeyValues,
  renderYaml,
  TableWriter,
} from "../render.ts";
import { renderPlacement } from "../placement_table.ts";
import { PlacementDecisionSchema } from "../../shared/api/placement.ts";
import type { Watched } from "../watch.ts";
import { readSshKeys } from "../ssh_keys.ts";
import {
  fetchVm,
  printVm,
  printVmList,
  type VmGetFormat,
  vmHeaders,
  vmKeyValues,
  type VmListFormat,
  vmRow,
} from "../vm_view.ts";
import { addVmSshCommand } from "./vm_ssh.ts";

/** Repeatable option: collects each value (like create.ts's `collect`, without its imports). */
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

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

/** The lifecycle verbs: `POST /v1/vms/{name}/{action}` (shared/api/tasks.ts VmActionSchema). */
const ACTIONS: { action: VmAction; description: string; timeout?: boolean }[] = [
  { action: "start", description: "start a stopped VM" },
  {
    action: "stop",
    description: "shut the guest down (ACPI power button), forced after --timeout",
    timeout: true,
  },
  { action: "poweroff", description: "power the VM off at once (like pulling the plug)" },
  {
    action: "reboot",
    description: "reboot the guest (ACPI power button, then reset), forced after --timeout",
    timeout: true,
  },
  { action: "pause", description: "halt the VM's vCPUs (memory is kept)" },
  { action: "resume", description: "resume a paused VM" },
  { action: "reset", description: "hard-reset the VM (like the reset button)" },
];

/**
 * Adds the server's context to a 409 of a lifecycle verb when its message does not already
 * say it: the VM's current status (`vm_invalid_state`, details.status) or the task in flight
 * (`vm_busy`, details.task_id).
 */
function explainConflict(e: unknown, name: string): unknown {
  if (!(e instanceof ApiCallError)) return e;
  const status = e.details?.status;
  const taskId = e.details?.task_id;
  let extra = "";
  if (e.code === "vm_invalid_state" && typeof status === "string") {
    if (!e.message.includes(status)) extra = `vm ${name} is ${status}`;
  } else if (e.code === "vm_busy" && typeof taskId === "string") {
    if (!e.message.includes(taskId)) {
      extra = `task ${taskId} is in flight; follow it with 'otherix vm get ${name} --watch'`;
    }
  }
  if (!extra) return e;
  return new ApiCallError(e.code, `${e.message} (${extra})`, e.details, e.status);
}

/** Writes one document of a `--watch` stream in `format` (json/yaml: one per change). */
function writeDocument(io: Io, format: OutputFormat, raw: unknown): void {
  io.out(format === "yaml" ? `---\n${renderYaml(raw)}` : renderJson(raw));
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
    .option(
      "--user-data <data>",
      "cloud-config user-data (#cloud-config + YAML): inline text, or @file to read a file",
    )
    .option(
      "--ssh-key <key>",
      "SSH public key for the guest's default user: @FILE (e.g. @~/.ssh/id_ed25519.pub) or" +
        " the key inline (repeatable)",
      collect,
    )
    .option("--pool <pool>", "storage pool (default: the cluster default pool)")
    .option("--node <node>", "place the VM on exactly this node")
    .option(
      "--network <name>",
      "attach a NIC to this network (repeatable, first NIC first; default: user-mode NAT)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .addOption(
      new Option(
        "--restart-policy <policy>",
        "what happens when QEMU exits unasked (server default: on-failure)",
      ).choices(RestartPolicySchema.options),
    )
    .addOption(
      new Option(
        "--wait [condition]",
        "wait until the VM is running (--wait), or until cloud-init finished in it" +
          " (--wait=cloud-init)",
      ).choices(["running", "cloud-init"]),
    )
    .option(
      "--dry-run",
      "show where the VM would be placed and why (every candidate node); create nothing. " +
        "Exits 1 when no node is eligible",
    )
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
      if (opts.sshKey !== undefined) body.ssh_authorized_keys = await readSshKeys(opts.sshKey, io);
      if (opts.pool !== undefined) body.pool = opts.pool;
      if (opts.node !== undefined) body.node = opts.node;
      if (opts.network !== undefined) body.networks = opts.network;
      if (opts.restartPolicy !== undefined) body.restart_policy = opts.restartPolicy;

      const client = await connect(cmd, io);
      if (opts.dryRun) {
        const d = await client.json("POST", "/v1/vms?dry_run=true", PlacementDecisionSchema, {
          body,
        });
        io.out(renderAs(opts.output, d.raw, () => renderPlacement(d.data)));
        if (d.data.node === null) {
          throw new ApiCallError("no_eligible_nodes", "dry run: no node is eligible");
        }
        return;
      }
      const started = io.now();
      const created = await client.json("POST", "/v1/vms", TaskSchema, { body });
      const format = opts.output as OutputFormat;
      const task = created.data;
      if (!opts.wait) {
        printTask(io, format, created.raw, `created task=${task.id} status=${task.status}\n`);
        return;
      }
      if (format === "text") io.out(`created task=${task.id} status=${task.status}\n`);
      const { waitForTask } = await import("../wait.ts");
      const done = await waitForTask(client, io, task.id, {
        timeoutSeconds: opts.waitTimeout,
        hint: `check with 'otherix vm get ${name}'`,
      });
      finishTask(io, format, done.task, done.raw, "vm_create_failed");
      if (format === "text") io.out(`vm running task=${task.id}\n`);
      if (opts.wait === "cloud-init") {
        const left = Math.max(1, opts.waitTimeout - (io.now() - started) / 1000);
        const { waitForCloudInit } = await import("../wait_cloud_init.ts");
        const ci = await waitForCloudInit(client, io, name, left);
        if (format === "text") io.out(`vm ${name} cloud-init ${ci.status}\n`);
      }
    });

  vm.command("list")
    .description("list VMs (--watch: then a row per change, until Ctrl+C)")
    .option("--show-ids", "add an ID column")
    .option("-w, --watch", "after the list, print a row for every change (Ctrl+C stops)")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds ADDRESSES)")
        .choices(["table", "wide", "text", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const wide = opts.output === "wide";
      const showIds = Boolean(opts.showIds);
      if (opts.watch) {
        return await watchList(client, io, (wide ? "table" : opts.output) as OutputFormat, showIds);
      }
      if (opts.output === "yaml") {
        const { raw } = await client.listAll("/v1/vms", VmSchema);
        return io.out(renderYaml(listEnvelope(raw)));
      }
      await printVmList(client, io, { format: opts.output as VmListFormat, showIds });
    });

  vm.command("get")
    .description("show one VM (--watch: then the VM again after every change, until Ctrl+C)")
    .argument("<name>", "VM name")
    .option("-w, --watch", "after the VM, print it again after every change (Ctrl+C stops)")
    .addOption(
      new Option(
        "-o, --output <format>",
        "output format (yaml: an apply-ready manifest; json: the raw view)",
      ).choices(["table", "text", "json", "yaml"]).default("text"),
    )
    .action(async (name: string, opts, cmd: Command) => {
      const path = `/v1/vms/${seg(name)}`;
      const client = await connect(cmd, io);
      const format = opts.output as OutputFormat;
      if (opts.watch) return await watchOne(client, io, format, name);
      if (format !== "yaml") return await printVm(client, io, path, format as VmGetFormat);
      const { data } = await fetchVm(client, path);
      const [{ renderManifests }, { projectVm }] = await Promise.all([
        import("../manifests/render.ts"),
        import("../manifests/vm_kind.ts"),
      ]);
      io.out(renderManifests([projectVm(data)]));
    });

  vm.command("delete")
    .description("delete a VM (asks for confirmation unless --force)")
    .argument("<name>", "VM name")
    .option(
      "--force",
      "do not ask for confirmation; and when the VM's node is not ready, remove the VM from" +
        " the cluster at once instead of waiting for its agent",
    )
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
      const deleted = await client.json("DELETE", path, TaskSchema, {
        query: { force: opts.force ? "true" : undefined },
      });
      const format = opts.output as OutputFormat;
      const task = deleted.data;
      if (!opts.wait) {
        printTask(io, format, deleted.raw, `deleted task=${task.id} status=${task.status}\n`);
        return;
      }
      if (format === "text") io.out(`deleted task=${task.id} status=${task.status}\n`);
      const { waitForTask } = await import("../wait.ts");
      const done = await waitForTask(client, io, task.id, {
        timeoutSeconds: opts.waitTimeout,
        hint: `check with 'otherix vm get ${name}'`,
      });
      finishTask(io, format, done.task, done.raw, "vm_delete_failed");
      if (format === "text") io.out(`vm deleted task=${task.id}\n`);
    });

  for (const { action, description, timeout } of ACTIONS) {
    const sub = vm.command(action)
      .description(`${description} (asynchronous; --wait blocks until done)`)
      .argument("<name>", "VM name");
    if (timeout) {
      sub.addOption(
        new Option(
          "--timeout <duration>",
          "how long the guest gets to shut down before it is forced (e.g. 60s, 2m;" +
            " server default 60s)",
        ).argParser(parseDurationArg),
      );
    }
    sub.option("--wait", "wait until the action is done")
      .addOption(waitTimeoutOption())
      .addOption(outputOption("text", ["text", "json", "yaml"]))
      .action(async (name: string, opts, cmd: Command) => {
        await runAction(cmd, io, action, name, opts);
      });
  }

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

  vm.command("console")
    .description("attach to the VM's serial console (detach with Ctrl+])")
    .argument("<name>", "VM name")
    .action(async (name: string, _opts, cmd: Command) => {
      seg(name);
      const client = await connect(cmd, io);
      // Loaded on use: the WebSocket client is needed by this command only.
      const { runConsole } = await import("../console.ts");
      await runConsole({ name, client, timeoutMs: globalsOf(cmd).requestTimeout * 1000 });
    });

  addVmSshCommand(vm, io);
}

/** `vm <action> NAME [--timeout D] [--wait]`. */
async function runAction(
  cmd: Command,
  io: Io,
  action: VmAction,
  name: string,
  opts: { timeout?: number; wait?: boolean; waitTimeout: number; output: string },
): Promise<void> {
  const path = `/v1/vms/${seg(name)}/${action}`;
  const client = await connect(cmd, io);
  const body: { timeout_seconds?: number } = {};
  if (opts.timeout !== undefined) body.timeout_seconds = opts.timeout;
  let started: { data: Task; raw: unknown };
  try {
    started = await client.json("POST", path, TaskSchema, { body });
  } catch (e) {
    throw explainConflict(e, name);
  }
  const format = opts.output as OutputFormat;
  const task = started.data;
  const line = `vm ${name} ${action} task=${task.id}\n`;
  if (!opts.wait) {
    printTask(io, format, started.raw, line);
    return;
  }
  if (format === "text") io.out(line);
  const { waitForTask } = await import("../wait.ts");
  const done = await waitForTask(client, io, task.id, {
    timeoutSeconds: opts.waitTimeout,
    hint: `check with 'otherix vm get ${name}'`,
  });
  finishTask(io, format, done.task, done.raw, "internal_error");
  if (format === "text") {
    const now = await client.json("GET", `/v1/vms/${seg(name)}`, VmSchema);
    io.out(`vm ${name} ${now.data.status} task=${task.id}\n`);
  }
}

/** `vm list --watch`: the table (or documents), then a row (document) per change. */
async function watchList(
  client: ApiClient,
  io: Io,
  format: OutputFormat,
  showIds: boolean,
): Promise<void> {
  let table: TableWriter | null = null;
  const emit = (w: Watched<Vm>, status?: string) => {
    if (format === "json" || format === "yaml") return writeDocument(io, format, w.raw);
    io.out(table!.row(vmRow(w.object, showIds, io.now(), status)));
  };
  const { watchKind } = await import("../watch.ts");
  await watchKind(client, io, {
    kind: "vm",
    schema: VmSchema,
    initial: (items) => {
      if (format === "json" || format === "yaml") return items.forEach((w) => emit(w));
      const rows = items.map((w) => vmRow(w.object, showIds, io.now()));
      table = new TableWriter(vmHeaders(showIds), rows);
      io.out(table.header() + rows.map((r) => table!.row(r)).join(""));
    },
    change: (c) => (c.type === "deleted" ? emit(c.last, "deleted") : emit(c.current)),
  });
}

/** `vm get NAME --watch`: the VM, then the VM again after every change. */
async function watchOne(
  client: ApiClient,
  io: Io,
  format: OutputFormat,
  name: string,
): Promise<void> {
  let table: TableWriter | null = null;
  let printed = 0;
  const emit = (w: Watched<Vm>, deleted = false) => {
    if (format === "json" || format === "yaml") return writeDocument(io, format, w.raw);
    if (format === "table") {
      table ??= new TableWriter(vmHeaders(false), [vmRow(w.object, false, io.now())]);
      if (printed++ === 0) io.out(table.header());
      return io.out(table.row(vmRow(w.object, false, io.now(), deleted ? "deleted" : undefined)));
    }
    const text = deleted
      ? renderKeyValues([["name", w.name], ["status", "deleted"]])
      : renderKeyValues(vmKeyValues(w.object));
    io.out((printed++ === 0 ? "" : "\n") + text);
  };
  const { watchKind } = await import("../watch.ts");
  await watchKind(client, io, {
    kind: "vm",
    name,
    schema: VmSchema,
    initial: (items) => {
      if (items.length === 0) throw new ApiCallError("vm_not_found", `vm "${name}" not found`);
      items.forEach((w) => emit(w));
    },
    change: (c) => (c.type === "deleted" ? emit(c.last, true) : emit(c.current)),
  });
}

function printTask(io: Io, format: OutputFormat, raw: unknown, text: string): void {
  io.out(renderAs(format, raw, () => text));
}

/**
 * Prints the final task for `-o json|yaml`; a failed task becomes
 * `api_error: <code>: <message>` (exit 1), `fallbackCode` when the task carries no error.
 */
function finishTask(
  io: Io,
  format: OutputFormat,
  task: Task,
  raw: unknown,
  fallbackCode: string,
): void {
  if (format !== "text") io.out(renderAs(format, raw, String));
  if (task.status === "failed") {
    throw new ApiCallError(
      task.error?.code ?? fallbackCode,
      task.error?.message ?? "task failed without an error message",
      task.error?.details,
    );
  }
}
