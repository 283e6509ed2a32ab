/**
 * Pool reconciliation (spec: storage pools): the control plane's heartbeat response lists the
 * pool instances it wants on this node (`desired_pools`); the agent creates each directory
 * (mode 0750, with `images/` inside) and reports it in the next heartbeat as `ready` with its
 * filesystem figures and cached images, or `failed` with a message.
 *
 * A pool path must lie inside `<state>/pools` (boundary-safe, normalized): the agent's
 * sandbox can write nowhere else, and the control plane's allowed-path gate
 * (`storage_pools.allowed_path_prefixes`) is checked again here before a directory is made.
 * Symlink escapes are refused: the real path of the deepest existing ancestor of the pool path
 * must stay inside the real pools directory, and no directory is created through a symlink. A
 * refused path reports the pool `failed` with a message starting `path_not_allowed:`.
 * The desired set is persisted in `<state>/desired-pools.json`, so the first heartbeat after a
 * restart already reports them. A pool the control plane no longer lists is no longer
 * provided (not reported, not scanned); its directory and image cache are left on disk.
 *
 * Scans ({@link PoolManager.scan}, `POST /v1/pools/scan`): the pool's filesystem figures, its
 * cached images (count, bytes) and the disks of the VMs whose manifest (`vm.json`) names the
 * pool's path (bytes allocated on disk).
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { z } from "zod";
import { type DesiredPool, DesiredPoolSchema } from "../shared/api/agent.ts";
import type { ObservedPool } from "../shared/api/nodes.ts";
import type { AgentPoolScan } from "../shared/api/pools.ts";
import { ApiError } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage, isWithin, mkdirBeneath, writeFileAtomic } from "./fsutil.ts";
import { ImageCache } from "./images.ts";

/** Prefix of the message of a pool refused by the path checks (the stable code). */
export const PATH_NOT_ALLOWED = "path_not_allowed";

/** Where a VM's files are, for attributing its disk to a pool in a scan. */
export interface VmDiskFiles {
  id: string;
  /** `<state>/vms/<id>/vm.json` (its `pool.path` names the VM's pool). */
  vmJson: string;
  /** `<state>/vms/<id>/disk.qcow2`. */
  disk: string;
}

/** The part of `vm.json` a scan reads. */
const VmManifestPoolSchema = z.object({ pool: z.object({ path: z.string() }) });

/** Bytes allocated on disk by the file at `path` (512-byte blocks; size when unknown). */
async function allocatedBytes(path: string): Promise<number | null> {
  try {
    const st = await Deno.lstat(path);
    if (!st.isFile) return null;
    return st.blocks !== null ? st.blocks * 512 : st.size;
  } catch {
    return null;
  }
}

/** The deepest existing ancestor of `path` (itself when it exists), by lstat. */
async function deepestExisting(path: string): Promise<string> {
  let cur = normalize(path);
  for (;;) {
    try {
      await Deno.lstat(cur);
      return cur;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const up = dirname(cur);
    if (up === cur) return cur;
    cur = up;
  }
}

/** Filesystem size figures, bytes. */
export interface FsFigures {
  total_bytes: number;
  available_bytes: number;
}

/**
 * `statfs(path)`: total and available (to unprivileged users) bytes of the filesystem.
 *
 * @throws the underlying error (e.g. permission denied)
 */
export function fsFigures(path: string): FsFigures {
  const s = statfsSync(path);
  return {
    total_bytes: Number(s.blocks) * Number(s.bsize),
    available_bytes: Number(s.bavail) * Number(s.bsize),
  };
}

/** Reconciles and observes the node's pools. */
export class PoolManager {
  #poolsDir: string;
  #stateFile: string;
  #log: Logger;
  #desired: DesiredPool[] = [];
  #lastStatus = new Map<string, string>();

  /**
   * @param poolsDir `<state>/pools`, the only place pools may live
   * @param stateFile where the desired set is persisted (`<state>/desired-pools.json`)
   */
  constructor(poolsDir: string, stateFile: string, log: Logger) {
    this.#poolsDir = poolsDir;
    this.#stateFile = stateFile;
    this.#log = log;
  }

  /** Loads the persisted desired set (missing or invalid file: empty). */
  async load(): Promise<void> {
    try {
      const raw = JSON.parse(await Deno.readTextFile(this.#stateFile));
      this.#desired = z.array(DesiredPoolSchema).parse(raw);
    } catch {
      this.#desired = [];
    }
  }

  /**
   * Removes download leftovers (`images/.*.part`, `images/.*.tmp`) from every desired pool
   * whose path is valid (pools whose path passes through a symlink are skipped, as in
   * {@link reconcile}). Call once at startup, before any download can run.
   */
  async cleanTemp(): Promise<void> {
    for (const p of this.#desired) {
      if (this.pathProblem(p.path)) continue;
      const dir = join(p.path, "images");
      try {
        await mkdirBeneath(this.#poolsDir, dir, 0o750);
      } catch {
        continue; // a symlink or non-directory on the way: reconcile() reports it
      }
      try {
        for await (const e of Deno.readDir(dir)) {
          if (e.isFile && e.name.startsWith(".") && /\.(part|tmp)$/.test(e.name)) {
            await Deno.remove(join(dir, e.name)).catch(() => {});
            this.#log.info("pools: removed interrupted download", { file: join(dir, e.name) });
          }
        }
      } catch {
        // no images dir yet
      }
    }
  }

  /** The current desired set. */
  desired(): DesiredPool[] {
    return this.#desired.map((p) => ({ ...p }));
  }

  /**
   * Replaces the desired set (from a heartbeat response). Returns true when it changed;
   * the new set is persisted then.
   */
  async setDesired(pools: DesiredPool[]): Promise<boolean> {
    const key = (ps: DesiredPool[]) =>
      JSON.stringify(ps.map((p) => [p.name, p.path]).sort((a, b) => (a < b ? -1 : 1)));
    if (key(pools) === key(this.#desired)) return false;
    this.#desired = pools.map((p) => ({ name: p.name, path: p.path }));
    try {
      await writeFileAtomic(this.#stateFile, JSON.stringify(this.#desired) + "\n", 0o640);
    } catch (e) {
      this.#log.warn("pools: cannot persist desired pools", { err: errorMessage(e) });
    }
    this.#log.info("pools: desired set changed", {
      pools: this.#desired.map((p) => `${p.name}=${p.path}`),
    });
    return true;
  }

  /**
   * Why `path` may not host a pool, or null when it may (lexical check only): it must be
   * absolute, normalized (no `.`, `..`, `//`) and strictly inside the pools directory.
   * Messages start with `path_not_allowed:`.
   */
  pathProblem(path: string): string | null {
    if (!path.startsWith("/")) return `${PATH_NOT_ALLOWED}: pool path ${path} is not absolute`;
    const trimmed = path.replace(/\/+$/, "");
    if (normalize(trimmed) !== trimmed || trimmed.includes("//")) {
      return `${PATH_NOT_ALLOWED}: pool path ${path} is not normalized (no '.', '..' or '//')`;
    }
    if (!isWithin(this.#poolsDir, path)) {
      return `${PATH_NOT_ALLOWED}: pool path ${path} is not under the agent's pools directory ` +
        this.#poolsDir;
    }
    return null;
  }

  /**
   * Why `path` escapes the pools directory through a symlink, or null: the real path of its
   * deepest existing ancestor must lie inside (or be) the real pools directory, which must
   * exist. Messages start with `path_not_allowed:`.
   */
  async escapeProblem(path: string): Promise<string | null> {
    const root = await Deno.realPath(this.#poolsDir);
    const ancestor = await deepestExisting(path);
    const real = await Deno.realPath(ancestor);
    if (isWithin(root, real, true)) return null;
    return `${PATH_NOT_ALLOWED}: pool path ${path} resolves outside the agent's pools ` +
      `directory ${this.#poolsDir}: ${ancestor} is a symlink or lies under one (real path ` +
      `${real})`;
  }

  /** Reconciles one pool: creates its directories and observes it. Never throws. */
  async reconcile(pool: DesiredPool): Promise<ObservedPool> {
    const failed = (message: string): ObservedPool => ({
      name: pool.name,
      path: pool.path,
      status: "failed",
      message,
      total_bytes: 0,
      available_bytes: 0,
      images: [],
    });
    const problem = this.pathProblem(pool.path);
    if (problem) return failed(problem);
    try {
      await Deno.mkdir(this.#poolsDir, { recursive: true, mode: 0o750 });
      const escape = await this.escapeProblem(pool.path);
      if (escape) return failed(escape);
      // Component by component, refusing symlinks: a planted link must not lead elsewhere.
      await mkdirBeneath(this.#poolsDir, join(pool.path, "images"), 0o750);
      const figures = fsFigures(pool.path);
      return {
        name: pool.name,
        path: pool.path,
        status: "ready",
        message: null,
        ...figures,
        images: await ImageCache.list(pool.path),
      };
    } catch (e) {
      return failed(`cannot prepare pool directory ${pool.path}: ${errorMessage(e)}`);
    }
  }

  /**
   * Scans desired pool `pool`: reconciles it (the directory is made if missing), then reports
   * its filesystem figures, cached images and the disks of the VMs in `vms` whose manifest
   * names the pool's path (VMs without a manifest yet are skipped: the control plane counts
   * them as not observed).
   *
   * @throws ApiError `pool_not_found` (not among the desired pools), `path_not_allowed`,
   *   `pool_scan_failed` (the directory cannot be prepared or read)
   */
  async scan(pool: DesiredPool, vms: readonly VmDiskFiles[]): Promise<AgentPoolScan> {
    if (!this.#desired.some((p) => p.name === pool.name && p.path === pool.path)) {
      throw new ApiError(
        "pool_not_found",
        `pool ${pool.name} at ${pool.path} is not provided by this node (not desired)`,
        { pool: pool.name, path: pool.path },
      );
    }
    const o = await this.reconcile(pool);
    if (o.status === "failed") {
      const message = o.message ?? "failed";
      throw new ApiError(
        message.startsWith(`${PATH_NOT_ALLOWED}:`) ? "path_not_allowed" : "pool_scan_failed",
        message,
      );
    }
    const poolPath = normalize(pool.path).replace(/\/+$/, "");
    const vmDisks: AgentPoolScan["vm_disks"] = [];
    for (const vm of vms) {
      let manifest: z.infer<typeof VmManifestPoolSchema>;
      try {
        manifest = VmManifestPoolSchema.parse(JSON.parse(await Deno.readTextFile(vm.vmJson)));
      } catch {
        continue; // not prepared yet (or unreadable): not observed
      }
      if (normalize(manifest.pool.path).replace(/\/+$/, "") !== poolPath) continue;
      const bytes = await allocatedBytes(vm.disk);
      if (bytes !== null) vmDisks.push({ vm_id: vm.id, bytes });
    }
    return {
      name: pool.name,
      path: pool.path,
      total_bytes: o.total_bytes,
      available_bytes: o.available_bytes,
      vm_disks: vmDisks,
      image_count: o.images.length,
      image_bytes: o.images.reduce((a, i) => a + i.size_bytes, 0),
    };
  }

  /** Reconciles and observes every desired pool. */
  async observe(): Promise<ObservedPool[]> {
    const out: ObservedPool[] = [];
    for (const p of this.#desired) {
      const o = await this.reconcile(p);
      const key = `${p.name}\0${p.path}`;
      const state = `${o.status}:${o.message ?? ""}`;
      if (this.#lastStatus.get(key) !== state) {
        this.#lastStatus.set(key, state);
        if (o.status === "failed") {
          this.#log.warn("pools: pool failed", { pool: p.name, path: p.path, err: o.message });
        } else this.#log.info("pools: pool ready", { pool: p.name, path: p.path });
      }
      out.push(o);
    }
    return out;
  }
}
