/**
 * How VMs print (`vm list`, `vm get`, their `--watch` rows) and the `vm list` / `vm get`
 * fetch-and-print steps, shared by the commander commands (`commands/vm.ts`) and the start-up
 * fast path (`fast_path.ts`). Loads no command-line library, no zod and no YAML (issue 10):
 * responses are checked with the generated `VmWire` schema.
 *
 * @module
 */
import type { Vm } from "../shared/api/vms.ts";
import type { ApiClient } from "./client.ts";
import { formatAge } from "./duration.ts";
import type { Io } from "./io.ts";
import { type KvEntry, renderJson, renderKeyValues, TableWriter } from "./table.ts";
import { addressText, allAddresses, vmNics } from "./vm_nics.ts";
import { VmWire } from "./wire_schemas.ts";

const VM_COLUMNS = ["name", "status", "node", "pool", "image", "age"];

/** Headers of `vm list` (and `vm get -o table`); `wide` adds ADDRESSES. */
export function vmHeaders(showIds: boolean, wide = false): string[] {
  const headers = showIds ? ["id", ...VM_COLUMNS] : [...VM_COLUMNS];
  return wide ? [...headers, "addresses"] : headers;
}

/** The ADDRESSES cell: every NIC's addresses, comma-separated; `-` when none is known. */
export function addressesText(vm: Vm): string {
  const all = allAddresses(vm);
  return all.length > 0 ? all.join(",") : "-";
}

/**
 * One `vm list` row; `status` overrides the VM's (`deleted` under `--watch`); `wide` adds the
 * ADDRESSES cell.
 */
export function vmRow(
  vm: Vm,
  showIds: boolean,
  now: number,
  status: string = vm.status,
  wide = false,
): string[] {
  const row = [vm.name, status, vm.node, vm.pool, vm.image, formatAge(vm.created_at, now)];
  if (wide) row.push(addressesText(vm));
  return showIds ? [vm.id, ...row] : row;
}

/** The `vm list` table (`wide`: with ADDRESSES). */
export function vmTable(vms: Vm[], showIds: boolean, now: number, wide = false): string {
  const rows = vms.map((v) => vmRow(v, showIds, now, v.status, wide));
  const table = new TableWriter(vmHeaders(showIds, wide), rows);
  return table.header() + rows.map((r) => table.row(r)).join("");
}

/** `done`, `pending`, or `error (<the console line>)`. */
function cloudInitText(ci: Vm["cloud_init"]): string | null {
  if (!ci) return null;
  return ci.status === "error" && ci.detail ? `error (${ci.detail})` : ci.status;
}

/**
 * `nics:` entries of `vm get`: each NIC (`nic<index>`) with its network, MAC and addresses
 * (`10.245.0.10/24 (ipam)`; `-` while none is known); omitted for a VM without NICs.
 */
function nicEntries(vm: Vm): KvEntry[] | null {
  const nics = vmNics(vm);
  if (nics.length === 0) return null;
  return nics.map((n): KvEntry => [`nic${n.index}`, [
    ["network", n.network],
    ["mac", n.mac],
    ["addresses", n.addresses.length > 0 ? n.addresses.map(addressText).join(", ") : "-"],
  ]]);
}

/**
 * `key: value` view of a VM, in the order of the spec's sample ("Step 4 — observe the VM"),
 * with the lifecycle fields after `desired_phase`; unset fields are omitted. The last task's
 * error is shown under `last_task`; the top-level `error` only when it says something else.
 * `cloud_init` and the NICs (`nics:`) follow.
 */
export function vmKeyValues(vm: Vm): KvEntry[] {
  const errorText = (e: Vm["error"]) => (e ? `${e.code}: ${e.message}` : null);
  const task = vm.last_task;
  const error = errorText(vm.error);
  return [
    ["id", vm.id],
    ["name", vm.name],
    ["owner_id", vm.owner_id],
    ["image_url", vm.image_url],
    ["image_sha256", vm.image_sha256],
    ["image", vm.image],
    ["image_format", vm.image_format],
    ["pool", vm.pool],
    ["node", vm.node],
    ["architecture", vm.architecture],
    ["vcpus", vm.vcpus],
    ["memory_mb", vm.memory_mb],
    ["disk_gib", vm.disk_gib],
    ["status", vm.status],
    ["desired_phase", vm.desired_phase],
    ["restart_policy", vm.restart_policy],
    ["restart_count", vm.restart_count],
    [
      "last_exit",
      vm.last_exit
        ? [["reason", vm.last_exit.reason], ["at", vm.last_exit.at], [
          "detail",
          vm.last_exit.detail,
        ]]
        : null,
    ],
    [
      "last_task",
      task
        ? [["id", task.id], ["type", task.type], ["status", task.status], [
          "error",
          errorText(task.error),
        ]]
        : null,
    ],
    ["error", error !== null && error !== errorText(task?.error ?? null) ? error : null],
    ["cloud_init", cloudInitText(vm.cloud_init)],
    ["nics", nicEntries(vm)],
    ["created_at", vm.created_at],
    ["updated_at", vm.updated_at],
  ];
}

/** Formats `vm list` prints itself (`yaml`: the commander path, which loads YAML). */
export type VmListFormat = "table" | "wide" | "text" | "json";

/** Options of {@link printVmList}. */
export interface VmListOptions {
  /** `table` and `text`: the table; `wide`: with ADDRESSES; `json`: the list envelope. */
  format: VmListFormat;
  /** Adds the ID column (`--show-ids`). */
  showIds: boolean;
}

/**
 * `vm list` (without `--watch`): every page of `GET /v1/vms`, printed as the table or, for
 * `json`, the API's envelope `{items, next_cursor: null}`.
 *
 * @throws ApiCallError / TransportError from the API
 */
export async function printVmList(client: ApiClient, io: Io, o: VmListOptions): Promise<void> {
  const { items, raw } = await client.listAll("/v1/vms", VmWire);
  io.out(
    o.format === "json"
      ? renderJson({ items: raw, next_cursor: null })
      : vmTable(items, o.showIds, io.now(), o.format === "wide"),
  );
}

/** Formats `vm get` prints itself (`yaml`, a manifest: the commander path). */
export type VmGetFormat = "table" | "text" | "json";

/**
 * Fetches one VM (`GET /v1/vms/{name}`, `path` already encoded) with its raw body.
 *
 * @throws ApiCallError (`vm_not_found`, …) / TransportError from the API
 */
export async function fetchVm(
  client: ApiClient,
  path: string,
): Promise<{ data: Vm; raw: unknown }> {
  return await client.json("GET", path, VmWire);
}

/**
 * `vm get NAME` (without `--watch`) in `format`: `text` the `key: value` view, `table` a
 * one-row table, `json` the raw body.
 *
 * @throws ApiCallError / TransportError from the API
 */
export async function printVm(
  client: ApiClient,
  io: Io,
  path: string,
  format: VmGetFormat,
): Promise<void> {
  const { data, raw } = await fetchVm(client, path);
  io.out(
    format === "json"
      ? renderJson(raw)
      : format === "table"
      ? vmTable([data], false, io.now())
      : renderKeyValues(vmKeyValues(data)),
  );
}
