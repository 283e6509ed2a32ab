/**
 * The manifest engine behind `otherix create -f`, `apply -f` and `delete -f` (spec 001
 * "Declarative manifests"; issue 8 "Manifests").
 *
 * `create` / `apply`:
 * 1. every document is checked before anything is sent: its shape (documents.ts), its create
 *    request against the API's own schema (the kinds), no resource twice in the set;
 * 2. the cluster is read: which resources exist (`create`: any is an error, `vm_already_exists`
 *    or `conflict`; `apply`: an existing one is `unchanged`, or refused with `conflict` naming
 *    each immutable field it has differently — Otherix changes nothing in place), and what
 *    the new ones reference: a VM's pool and network (declared in the set or existing:
 *    `pool_not_found`, `network_not_found`; no pool and no cluster default:
 *    `default_pool_not_set`), the nodes a VM or pool names (`node_not_found`); a VM whose
 *    references all exist already is placed with a dry run (`no_eligible_nodes`, …);
 * 3. only then are resources created, ordered Network → StoragePool → VM (file order within a
 *    kind). Networks are synchronous. A pool instance is waited for (agent reports `ready`)
 *    when `--wait` is given or a VM of the set uses the pool (placement needs a ready pool).
 *    VM creates are asynchronous; `--wait` then follows each VM's task.
 *
 * A failure midway stops there: what was created so far is listed on stderr, and nothing of
 * the failing document stays behind (its pool instances created so far are deleted; a VM
 * whose create task failed under `--wait` is deleted). Errors name the document and the field:
 * `api_error: <code>: <file> document <n> (<Kind> <name>): <field>: <message>`.
 *
 * `delete`: the same set in reverse order (VM → StoragePool → Network), after a confirmation
 * unless `--force`; resources already gone are reported as skipped. Pools only go once the VMs
 * of the set are gone (their disks block pool deletion), so VM deletions are waited for when
 * pools or networks follow, or with `--wait`.
 *
 * @module
 */
import { z } from "zod";
import { type Manifest, MANIFEST_KINDS, MANIFEST_WIRE_FIELDS } from "../../shared/api/manifests.ts";
import {
  type Pool,
  type PoolInstanceView,
  PoolInstanceViewSchema,
  PoolSchema,
} from "../../shared/api/pools.ts";
import { PlacementDecisionSchema } from "../../shared/api/placement.ts";
import { type Task, TaskSchema } from "../../shared/api/tasks.ts";
import { type Vm, VmSchema } from "../../shared/api/vms.ts";
import { ClusterDefaultPoolSchema } from "../../shared/api/cluster.ts";
import type { ApiClient } from "../client.ts";
import { seg } from "../common.ts";
import { ApiCallError, UsageError, WaitTimeoutError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import { waitForTask } from "../wait.ts";
import { labelOf, type ManifestDoc, ManifestError } from "./documents.ts";
import { networkChanges, networkTarget, type NetworkView } from "./network_kind.ts";
import { NetworkSchema } from "../../shared/api/networks.ts";
import { poolChanges, poolTargets } from "./pool_kind.ts";
import { type FieldChange, refOf, type Target } from "./target.ts";
import { vmChanges, vmTarget } from "./vm_kind.ts";

/** Options of {@link applyManifests}. */
export interface ApplyOptions {
  /** `create`: every resource must be new; `apply`: existing ones are compared. */
  mode: "create" | "apply";
  /** `--wait`: block on VM tasks and pool reconciliation. */
  wait: boolean;
  /** `--wait-timeout`, seconds (each wait). */
  waitTimeoutSeconds: number;
  /** How often a pool instance is polled while waiting for it, ms (default 500). */
  pollMs?: number;
}

/** Options of {@link deleteManifests}. */
export interface DeleteOptions {
  /** No confirmation prompt. */
  force: boolean;
  wait: boolean;
  waitTimeoutSeconds: number;
}

const KIND_RANK = new Map<string, number>(MANIFEST_KINDS.map((k, i) => [k, i]));

/** The targets of a document (validated create requests). @throws ManifestError */
export function targetsOf(doc: ManifestDoc): Target[] {
  const m = doc.manifest;
  switch (m.kind) {
    case "VM":
      return [vmTarget(doc as ManifestDoc<typeof m>)];
    case "StoragePool":
      return poolTargets(doc as ManifestDoc<typeof m>);
    case "Network":
      return [networkTarget(doc as ManifestDoc<typeof m>)];
  }
}

/** Identity of a target in a set: kind, name and (pools) node. */
function keyOf(t: Pick<Target, "kind" | "name" | "node">): string {
  return `${t.kind}/${t.name}/${t.node ?? ""}`;
}

/**
 * Checks every document and returns their targets in creation order (Network → StoragePool →
 * VM, file order within a kind).
 *
 * @throws ManifestError `validation_failed` for the first bad document, or a resource that two
 *   documents declare
 */
export function planTargets(docs: ManifestDoc[]): Target[] {
  const all = docs.flatMap(targetsOf);
  const seen = new Map<string, Target>();
  for (const t of all) {
    const prev = seen.get(keyOf(t));
    if (prev) {
      throw ManifestError.invalid(
        t.doc,
        t.nodeField ?? "metadata.name",
        `${refOf(t)} is declared twice (also by ${labelOf(prev.doc)})`,
      );
    }
    seen.set(keyOf(t), t);
  }
  return all.map((t, i) => ({ t, i }))
    .sort((a, b) => KIND_RANK.get(a.t.kind)! - KIND_RANK.get(b.t.kind)! || a.i - b.i)
    .map(({ t }) => t);
}

/** A live resource found for a target. */
type Live =
  | { kind: "VM"; vm: Vm }
  | { kind: "StoragePool"; instance: PoolInstanceView }
  | { kind: "Network"; network: NetworkView };

/** Reads of the cluster, cached for one run. */
class ClusterReader {
  #pools = new Map<string, Pool | null>();
  #networks = new Map<string, NetworkView | null>();
  #nodes = new Map<string, boolean>();
  #defaultPool: string | null | undefined;

  constructor(readonly client: ApiClient) {}

  async vm(name: string): Promise<Vm | null> {
    try {
      return (await this.client.json("GET", `/v1/vms/${seg(name)}`, VmSchema)).data;
    } catch (e) {
      if (e instanceof ApiCallError && e.status === 404 && e.code === "vm_not_found") return null;
      throw e;
    }
  }

  async pool(name: string): Promise<Pool | null> {
    if (!this.#pools.has(name)) {
      try {
        const r = await this.client.json("GET", `/v1/pools/${seg(name)}`, PoolSchema);
        this.#pools.set(name, r.data);
      } catch (e) {
        if (!(e instanceof ApiCallError && e.status === 404 && e.code === "pool_not_found")) {
          throw e;
        }
        this.#pools.set(name, null);
      }
    }
    return this.#pools.get(name)!;
  }

  /**
   * The network `name` (null: none).
   *
   * @throws ApiCallError `not_found` when the control plane has no network API at all
   */
  async network(name: string): Promise<NetworkView | null> {
    if (!this.#networks.has(name)) {
      try {
        const r = await this.client.json("GET", `/v1/networks/${seg(name)}`, NetworkSchema);
        this.#networks.set(name, r.data);
      } catch (e) {
        if (!(e instanceof ApiCallError && e.status === 404)) throw e;
        if (e.code !== "network_not_found") {
          throw new ApiCallError(
            e.code,
            `this control plane has no network API (GET /v1/networks: ${e.message})`,
            e.details,
            e.status,
          );
        }
        this.#networks.set(name, null);
      }
    }
    return this.#networks.get(name)!;
  }

  async nodeExists(name: string): Promise<boolean> {
    if (!this.#nodes.has(name)) {
      try {
        await this.client.json("GET", `/v1/nodes/${seg(name)}`, z.unknown());
        this.#nodes.set(name, true);
      } catch (e) {
        if (!(e instanceof ApiCallError && e.status === 404 && e.code === "node_not_found")) {
          throw e;
        }
        this.#nodes.set(name, false);
      }
    }
    return this.#nodes.get(name)!;
  }

  async defaultPool(): Promise<string | null> {
    if (this.#defaultPool === undefined) {
      const r = await this.client.json("GET", "/v1/cluster/default-pool", ClusterDefaultPoolSchema);
      this.#defaultPool = r.data.default_pool_name;
    }
    return this.#defaultPool;
  }

  /** Forgets what is known of pool `name` (after creating or deleting instances). */
  dropPool(name: string): void {
    this.#pools.delete(name);
  }
}

/** The live resource of `t`, or null when it does not exist. */
async function liveOf(reader: ClusterReader, t: Target): Promise<Live | null> {
  switch (t.kind) {
    case "VM": {
      const vm = await reader.vm(t.name);
      return vm && { kind: "VM", vm };
    }
    case "StoragePool": {
      const pool = await reader.pool(t.name);
      const instance = pool?.instances.find((i) => i.node === t.node);
      return instance ? { kind: "StoragePool", instance } : null;
    }
    case "Network": {
      const network = await reader.network(t.name);
      return network && { kind: "Network", network };
    }
  }
}

/** How `live` differs from `t`'s manifest. */
function changesOf(t: Target, live: Live): FieldChange[] {
  const m = t.doc.manifest as Manifest;
  if (live.kind === "VM" && m.kind === "VM") return vmChanges(m.spec, live.vm);
  if (live.kind === "StoragePool") return poolChanges(t, live.instance);
  if (live.kind === "Network" && m.kind === "Network") return networkChanges(m.spec, live.network);
  return [];
}

/** Error of a document naming `field`, with the server's (or our) `code`. */
function docError(
  t: Target,
  code: string,
  field: string | null,
  message: string,
  details: Record<string, unknown> = {},
): ManifestError {
  const m = t.doc.manifest;
  return new ManifestError(code, t.doc.source, m.kind, m.metadata.name, field, message, details);
}

/** `"x"`, `4096`, `null` → how a value appears in messages. */
function show(v: unknown): string {
  return v === null || v === undefined ? "(none)" : JSON.stringify(v);
}

/**
 * Re-throws an API error about target `t` as a ManifestError naming its document (and, for
 * `validation_failed` with field details, the manifest field); other errors unchanged.
 */
function aboutTarget(t: Target, e: unknown, fieldOf?: (wire: string) => string): unknown {
  if (!(e instanceof ApiCallError) || e instanceof ManifestError) return e;
  const fields = e.details?.fields as { path?: string }[] | undefined;
  const wire = fields?.[0]?.path;
  let field: string | null = null;
  if (wire && fieldOf) {
    const [head, ...rest] = wire.split(".");
    field = [fieldOf(head), ...rest].join(".");
  }
  return new ManifestError(
    e.code,
    t.doc.source,
    t.doc.manifest.kind,
    t.doc.manifest.metadata.name,
    field,
    e.message,
    e.details ?? {},
  );
}

/** A VM created by this run, waiting for its task. */
interface CreatedVm {
  target: Target;
  task: Task;
}

/**
 * Runs `create -f` / `apply -f` over `docs` (see the module doc). Prints one line per
 * resource on stdout.
 *
 * @throws ManifestError for a bad document, an existing resource (`create`), a changed
 *   immutable field (`apply`), a missing reference, or the first failure while creating;
 *   WaitTimeoutError when a wait runs out; transport errors as they come
 */
export async function applyManifests(
  client: ApiClient,
  io: Io,
  docs: ManifestDoc[],
  opts: ApplyOptions,
): Promise<void> {
  const targets = planTargets(docs);
  const reader = new ClusterReader(client);

  // What exists, and what an apply would have to change.
  const toCreate: Target[] = [];
  const unchanged: Target[] = [];
  for (const t of targets) {
    let live: Live | null;
    try {
      live = await liveOf(reader, t);
    } catch (e) {
      throw aboutTarget(t, e);
    }
    if (!live) {
      toCreate.push(t);
      continue;
    }
    if (opts.mode === "create") {
      throw docError(
        t,
        t.kind === "VM"
          ? "vm_already_exists"
          : t.kind === "Network"
          ? "network_already_exists"
          : "conflict",
        null,
        `${refOf(t)} already exists (use 'otherix apply -f' to create only what is missing)`,
      );
    }
    const changes = changesOf(t, live);
    if (changes.length > 0) {
      const c = changes[0];
      throw docError(
        t,
        "conflict",
        c.field,
        `cannot change ${refOf(t)}: the field is immutable (manifest ${show(c.manifest)}, ` +
          `live ${show(c.live)})` +
          (changes.length > 1 ? `; also ${changes.slice(1).map((x) => x.field).join(", ")}` : "") +
          `; delete and re-create it to change it`,
        { changes },
      );
    }
    unchanged.push(t);
  }

  // References of what is to be created.
  const declared = new Set(toCreate.map((t) => `${t.kind}/${t.name}`));
  const dryRun: Target[] = [];
  for (const t of toCreate) {
    try {
      if (await checkReferences(reader, declared, t)) dryRun.push(t);
    } catch (e) {
      throw aboutTarget(t, e);
    }
  }
  for (const t of dryRun) {
    let d;
    try {
      d = await client.json("POST", "/v1/vms?dry_run=true", PlacementDecisionSchema, {
        body: t.body,
      });
    } catch (e) {
      throw aboutTarget(t, e, vmFieldOf);
    }
    if (d.data.node === null) {
      throw docError(
        t,
        "no_eligible_nodes",
        null,
        `no node can take ${refOf(t)} in pool ${d.data.pool}` +
          ` (see 'otherix vm create ${t.name} … --dry-run')`,
      );
    }
  }

  for (const t of unchanged) io.out(`${refOf(t)} unchanged\n`);

  // Create, in order.
  const created: string[] = [];
  const vms: CreatedVm[] = [];
  // The pools the new VMs go to (placement needs their instances ready).
  const poolsNeeded = new Set<string>();
  for (const t of toCreate) {
    if (t.kind !== "VM") continue;
    const pool = (t.body as { pool?: string }).pool ?? await reader.defaultPool();
    if (pool) poolsNeeded.add(pool);
  }
  const byDoc = groupByDoc(toCreate);
  try {
    for (const [doc, group] of byDoc) {
      const kind = doc.manifest.kind;
      if (kind === "Network") {
        for (const t of group) {
          try {
            await client.json("POST", "/v1/networks", z.unknown(), { body: t.body });
          } catch (e) {
            throw aboutTarget(t, e, networkFieldOf);
          }
          created.push(refOf(t));
          io.out(`${refOf(t)} created\n`);
        }
      } else if (kind === "StoragePool") {
        await createPoolDoc(client, io, group, created, {
          wait: opts.wait || poolsNeeded.has(doc.manifest.metadata.name),
          timeoutSeconds: opts.waitTimeoutSeconds,
          pollMs: opts.pollMs ?? 500,
        });
        reader.dropPool(doc.manifest.metadata.name);
      } else {
        for (const t of group) {
          let r;
          try {
            r = await client.json("POST", "/v1/vms", TaskSchema, { body: t.body });
          } catch (e) {
            throw aboutTarget(t, e, vmFieldOf);
          }
          created.push(refOf(t));
          vms.push({ target: t, task: r.data });
          io.out(`${refOf(t)} created task=${r.data.id} status=${r.data.status}\n`);
        }
      }
    }
    if (opts.wait) {
      for (const v of vms) await waitVmCreated(client, io, v, opts.waitTimeoutSeconds, created);
    }
  } catch (e) {
    io.err(
      created.length > 0
        ? `created before the failure: ${created.join(", ")}\n`
        : "nothing was created\n",
    );
    throw e;
  }
}

/**
 * Checks what target `t` (to be created) references: a pool instance's node; a VM's pool
 * (declared in the set, or existing; else the cluster default), network and node.
 *
 * @returns true for a VM whose references all exist already (it can be placed by a dry run)
 * @throws ManifestError `node_not_found`, `pool_not_found`, `default_pool_not_set`,
 *   `network_not_found` naming the field
 */
async function checkReferences(
  reader: ClusterReader,
  declared: Set<string>,
  t: Target,
): Promise<boolean> {
  if (t.kind === "StoragePool") {
    if (!(await reader.nodeExists(t.node!))) {
      throw docError(t, "node_not_found", t.nodeField!, `node ${t.node} not found`);
    }
    return false;
  }
  if (t.kind !== "VM") return false;
  const b = t.body as { pool?: string; node?: string; networks?: string[] };
  let pool = b.pool;
  if (pool === undefined) {
    pool = (await reader.defaultPool()) ?? undefined;
    if (pool === undefined) {
      throw docError(
        t,
        "default_pool_not_set",
        "spec.pool",
        "no pool given and no cluster default pool is configured",
      );
    }
  } else if (
    !declared.has(`StoragePool/${pool}`) && ((await reader.pool(pool))?.instances.length ?? 0) === 0
  ) {
    throw docError(t, "pool_not_found", "spec.pool", `pool ${pool} not found`);
  }
  const network = b.networks?.[0];
  if (network !== undefined && !declared.has(`Network/${network}`)) {
    if (!(await reader.network(network))) {
      throw docError(t, "network_not_found", "spec.network", `network ${network} not found`);
    }
  }
  if (b.node !== undefined && !(await reader.nodeExists(b.node))) {
    throw docError(t, "node_not_found", "spec.node", `node ${b.node} not found`);
  }
  return !declared.has(`StoragePool/${pool}`) &&
    !(network !== undefined && declared.has(`Network/${network}`));
}

const vmFieldOf = (w: string) =>
  w === "name" ? "metadata.name" : w === "networks" ? "spec.network" : (VM_WIRE_REV.get(w) ?? w);
const networkFieldOf = (w: string) => (w === "name" ? "metadata.name" : (NET_WIRE_REV.get(w) ?? w));

const VM_WIRE_REV = new Map(
  Object.entries(MANIFEST_WIRE_FIELDS.VM).map(([m, w]) => [w as string, `spec.${m}`]),
);
const NET_WIRE_REV = new Map(
  Object.entries(MANIFEST_WIRE_FIELDS.Network).map(([m, w]) => [w as string, `spec.${m}`]),
);

/** Targets grouped by document, in the order of `targets`. */
function groupByDoc(targets: Target[]): Map<ManifestDoc, Target[]> {
  const out = new Map<ManifestDoc, Target[]>();
  for (const t of targets) {
    const g = out.get(t.doc) ?? [];
    g.push(t);
    out.set(t.doc, g);
  }
  return out;
}

/**
 * Creates the instances of one StoragePool document (and waits for them when asked); on a
 * failure deletes the instances of this document it created, so none stays behind.
 */
async function createPoolDoc(
  client: ApiClient,
  io: Io,
  group: Target[],
  created: string[],
  wait: { wait: boolean; timeoutSeconds: number; pollMs: number },
): Promise<void> {
  const mine: { t: Target; id: string }[] = [];
  try {
    for (const t of group) {
      let r;
      try {
        r = await client.json("POST", "/v1/pools", PoolInstanceViewSchema, { body: t.body });
      } catch (e) {
        throw aboutTarget(
          t,
          e,
          (w) => (w === "name" ? "metadata.name" : w === "node" ? t.nodeField! : `spec.${w}`),
        );
      }
      mine.push({ t, id: r.data.id });
      io.out(`${refOf(t)} created\n`);
    }
    if (wait.wait) {
      for (const { t, id } of mine) {
        const p = await waitPoolReady(client, io, t, id, wait.timeoutSeconds, wait.pollMs);
        if (p.status === "failed") {
          throw docError(
            t,
            failedCode(p.message),
            null,
            `${refOf(t)} failed: ${p.message ?? "no reason given"}`,
          );
        }
        io.out(`${refOf(t)} ready\n`);
      }
    }
  } catch (e) {
    for (const { t } of mine.reverse()) {
      try {
        await client.json("DELETE", `/v1/pools/${seg(t.name)}`, PoolInstanceViewSchema, {
          query: { node: t.node },
        });
        io.err(`${refOf(t)} removed (its document failed)\n`);
      } catch (d) {
        io.err(`${refOf(t)} could not be removed: ${(d as Error).message}\n`);
        created.push(refOf(t));
      }
    }
    throw e;
  }
  created.push(...mine.map(({ t }) => refOf(t)));
}

/** The code a failed pool's message starts with (`path_not_allowed: …`), else `conflict`. */
function failedCode(message: string | null): string {
  const code = message?.split(":")[0] ?? "";
  return /^[a-z_]+$/.test(code) ? code : "conflict";
}

/** Polls pool instance `id` until it is not `pending`. @throws WaitTimeoutError */
async function waitPoolReady(
  client: ApiClient,
  io: Io,
  t: Target,
  id: string,
  seconds: number,
  pollMs: number,
): Promise<PoolInstanceView> {
  const deadline = io.now() + seconds * 1000;
  for (;;) {
    const { data } = await client.json("GET", `/v1/pools/${seg(id)}`, PoolInstanceViewSchema);
    if (data.status !== "pending") return data;
    const left = deadline - io.now();
    if (left <= 0) {
      throw new WaitTimeoutError(
        `timed out after ${seconds}s waiting for ${refOf(t)} (still pending; ${labelOf(t.doc)})`,
      );
    }
    await io.sleep(Math.min(pollMs, left));
  }
}

/**
 * Waits for a VM's create task; a failed one makes the VM go (deleted and waited for) and
 * throws the task's error naming the document.
 */
async function waitVmCreated(
  client: ApiClient,
  io: Io,
  v: CreatedVm,
  seconds: number,
  created: string[],
): Promise<void> {
  const ref = refOf(v.target);
  const done = await waitForTask(client, io, v.task.id, {
    timeoutSeconds: seconds,
    hint: `check with 'otherix vm get ${v.target.name}'`,
  });
  if (done.task.status === "succeeded") {
    io.out(`${ref} running task=${v.task.id}\n`);
    return;
  }
  const err = done.task.error ?? { code: "vm_create_failed", message: "the create task failed" };
  try {
    const del = await client.json("DELETE", `/v1/vms/${seg(v.target.name)}`, TaskSchema);
    await waitForTask(client, io, del.data.id, { timeoutSeconds: seconds });
    created.splice(created.indexOf(ref), 1);
    io.err(`${ref} removed (its create task failed)\n`);
  } catch (e) {
    io.err(`${ref} could not be removed: ${(e as Error).message}\n`);
  }
  throw docError(v.target, err.code, null, `create task ${v.task.id} failed: ${err.message}`);
}

/**
 * Runs `delete -f` over `docs` (see the module doc).
 *
 * @throws UsageError without confirmation; ManifestError for a bad document or the first
 *   failed deletion (what was deleted before is listed on stderr)
 */
export async function deleteManifests(
  client: ApiClient,
  io: Io,
  docs: ManifestDoc[],
  opts: DeleteOptions,
): Promise<void> {
  const targets = planTargets(docs).reverse();
  const list = targets.map(refOf).join(", ");
  if (!opts.force) {
    if (!io.stdinIsTerminal()) {
      throw new UsageError(
        `refusing to delete ${list} without confirmation: stdin is not a terminal (pass --force)`,
      );
    }
    if (!(await confirm(io.prompter, `Delete ${list}?`))) {
      throw new UsageError("aborted: nothing was deleted");
    }
  }
  const deleted: string[] = [];
  const vmTasks: { t: Target; task: Task }[] = [];
  const waitVms = async () => {
    for (const { t, task } of vmTasks.splice(0)) {
      const done = await waitForTask(client, io, task.id, {
        timeoutSeconds: opts.waitTimeoutSeconds,
        hint: `check with 'otherix vm get ${t.name}'`,
      });
      if (done.task.status === "failed") {
        const err = done.task.error ?? { code: "vm_delete_failed", message: "delete failed" };
        throw docError(t, err.code, null, `delete task ${task.id} failed: ${err.message}`);
      }
      io.out(`${refOf(t)} gone\n`);
    }
  };
  try {
    for (const t of targets) {
      if (t.kind !== "VM") await waitVms();
      const ref = refOf(t);
      try {
        if (t.kind === "VM") {
          const r = await client.json("DELETE", `/v1/vms/${seg(t.name)}`, TaskSchema);
          vmTasks.push({ t, task: r.data });
          io.out(`${ref} deleted task=${r.data.id} status=${r.data.status}\n`);
        } else if (t.kind === "StoragePool") {
          await client.json("DELETE", `/v1/pools/${seg(t.name)}`, PoolInstanceViewSchema, {
            query: { node: t.node },
          });
          io.out(`${ref} deleted\n`);
        } else {
          await client.json("DELETE", `/v1/networks/${seg(t.name)}`, z.unknown());
          io.out(`${ref} deleted\n`);
        }
        deleted.push(ref);
      } catch (e) {
        if (isGone(t, e)) {
          io.out(`${ref} not found (skipped)\n`);
          continue;
        }
        throw aboutTarget(t, e);
      }
    }
    if (opts.wait) await waitVms();
  } catch (e) {
    io.err(
      deleted.length > 0
        ? `deleted before the failure: ${deleted.join(", ")}\n`
        : "nothing was deleted\n",
    );
    throw e;
  }
}

/** True when `e` says `t` does not exist (any more). */
function isGone(t: Target, e: unknown): boolean {
  if (!(e instanceof ApiCallError)) return false;
  if (t.kind === "VM") return e.code === "vm_not_found";
  if (t.kind === "StoragePool") return e.code === "pool_not_found" || e.code === "pool_not_on_node";
  return e.code === "network_not_found";
}
