/**
 * Node capacity figures for heartbeats (shared/api/nodes.ts `NodeResources`; spec: developer
 * guide "Node-pressure detection": the system disk is the root filesystem, `statfs("/")`).
 *
 * Sandbox: Deno's `statfs` needs read permission on the path it is given, and read access to
 * `/` is read access to every file, which the agent must not have. So the root filesystem is
 * read through `df --output=size,avail -B1 /` (coreutils; on the agent's run allowlist,
 * scripts/permissions.ts), which reports exactly `f_blocks·f_frsize` and `f_bavail·f_frsize`.
 * When `df` fails, the state directory's filesystem is reported instead (with one Warn line).
 * Memory and load need `--allow-sys=systemMemoryInfo,loadavg`.
 *
 * Test hook: when `OTHERIX_TEST_READINGS` names a JSON file (inside the agent's roots), its
 * fields replace the matching readings on every heartbeat, e.g.
 * `{"memory_available_mib": 10}`: the only way to drive node pressure on a real agent without
 * starving the host. Its use is logged once at Warn.
 *
 * @module
 */
import { type NodeResources, NodeResourcesSchema } from "../shared/api/nodes.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage } from "./fsutil.ts";
import { type FsFigures, fsFigures } from "./pools.ts";

const MIB = 1024 * 1024;

/** The env var naming a JSON file of readings overrides (tests). */
export const TEST_READINGS_ENV = "OTHERIX_TEST_READINGS";

/**
 * Parses `df --output=size,avail -B1` output (a header line, then `<size> <avail>` in bytes).
 *
 * @throws Error when the output has no such line
 */
export function parseDfOutput(text: string): FsFigures {
  const line = text.trim().split("\n")[1]?.trim() ?? "";
  const m = /^(\d+)\s+(\d+)$/.exec(line);
  if (!m) throw new Error(`unexpected df output: ${JSON.stringify(text.slice(0, 200))}`);
  return { total_bytes: Number(m[1]), available_bytes: Number(m[2]) };
}

/**
 * Figures of the filesystem holding `path` through `df`.
 *
 * @throws Error when `df` cannot run or fails
 */
export async function dfFigures(path: string): Promise<FsFigures> {
  const out = await new Deno.Command("df", {
    args: ["--output=size,avail", "-B1", path],
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  if (!out.success) {
    throw new Error(`df ${path}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return parseDfOutput(new TextDecoder().decode(out.stdout));
}

/** Reads the node's resources; one per agent (it remembers what it already logged). */
export class SystemInfo {
  #stateDir: string;
  #log: Logger;
  #warnedDisk = false;
  #warnedHook = false;
  #readingsFile: string | null;

  /**
   * @param stateDir the state root (system-disk fallback)
   * @param getEnv env lookup (default `Deno.env.get`; reads {@link TEST_READINGS_ENV})
   */
  constructor(
    stateDir: string,
    log: Logger,
    getEnv: (name: string) => string | undefined = (n) => Deno.env.get(n),
  ) {
    this.#stateDir = stateDir;
    this.#log = log;
    this.#readingsFile = getEnv(TEST_READINGS_ENV) || null;
  }

  /** Figures of the system disk: `/` through `df`, else the state directory's filesystem. */
  async systemDisk(): Promise<FsFigures> {
    try {
      return await dfFigures("/");
    } catch (e) {
      if (!this.#warnedDisk) {
        this.#warnedDisk = true;
        this.#log.warn(
          "system disk: cannot read / with df; reporting the state directory's " +
            "filesystem",
          { state_dir: this.#stateDir, err: errorMessage(e) },
        );
      }
      try {
        return fsFigures(this.#stateDir);
      } catch {
        return { total_bytes: 0, available_bytes: 0 };
      }
    }
  }

  /** The node's current resources (memory in MiB, disk in bytes, load average of 1 min). */
  async read(): Promise<NodeResources> {
    let memTotal = 0;
    let memAvail = 0;
    try {
      const m = Deno.systemMemoryInfo();
      memTotal = Math.floor(m.total / MIB);
      memAvail = Math.floor(m.available / MIB);
    } catch {
      // not permitted: report zeros
    }
    let load = 0;
    try {
      load = Deno.loadavg()[0];
    } catch {
      // not permitted
    }
    const disk = await this.systemDisk();
    const readings: NodeResources = {
      cpu_cores_total: navigator.hardwareConcurrency ?? 0,
      load_average_1m: Math.max(0, load),
      memory_total_mib: memTotal,
      memory_available_mib: memAvail,
      system_disk_total_bytes: disk.total_bytes,
      system_disk_available_bytes: disk.available_bytes,
    };
    return { ...readings, ...await this.#overrides() };
  }

  /** The test hook's overrides (none when unset; a bad file is logged and ignored). */
  async #overrides(): Promise<Partial<NodeResources>> {
    if (!this.#readingsFile) return {};
    if (!this.#warnedHook) {
      this.#warnedHook = true;
      this.#log.warn(`${TEST_READINGS_ENV} is set: heartbeat readings come from a test file`, {
        file: this.#readingsFile,
      });
    }
    try {
      const parsed = NodeResourcesSchema.partial().strict().safeParse(
        JSON.parse(await Deno.readTextFile(this.#readingsFile)),
      );
      if (parsed.success) return parsed.data;
      this.#log.warn("test readings ignored: invalid", { file: this.#readingsFile });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        this.#log.warn("test readings ignored", { file: this.#readingsFile, err: errorMessage(e) });
      }
    }
    return {};
  }
}

/** The host name, or `localhost` when it cannot be read. */
export function hostName(): string {
  try {
    return Deno.hostname();
  } catch {
    return "localhost";
  }
}
