/**
 * Pool reconciliation (spec: storage pools): the control plane's heartbeat response lists the
 * pool instances it wants on this node (`desired_pools`); the agent creates each directory
 * (mode 0750, with `images/` inside) and reports it in the next heartbeat as `ready` with its
 * filesystem figures and cached images, or `failed` with a message.
 *
 * A pool path must lie inside `<state>/pools` (boundary-safe; no symlinks on the way):
 * the agent's sandbox can write nowhere else. The desired set is persisted in
 * `<state>/desired-pools.json`, so the first heartbeat after a restart already reports them.
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { type DesiredPool, DesiredPoolSchema } from "../shared/api/agent.ts";
import type { ObservedPool } from "../shared/api/nodes.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage, isWithin, mkdirBeneath, writeFileAtomic } from "./fsutil.ts";
import { ImageCache } from "./images.ts";

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

  /** Why `path` may not host a pool, or null when it may (lexical check only). */
  pathProblem(path: string): string | null {
    if (!path.startsWith("/")) return `pool path ${path} is not absolute`;
    if (!isWithin(this.#poolsDir, path)) {
      return `pool path ${path} is not under the agent's pools directory ${this.#poolsDir}`;
    }
    return null;
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
