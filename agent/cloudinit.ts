/**
 * cloud-init NoCloud seed ISOs: an ISO 9660 volume labelled `cidata` holding `user-data` and
 * `meta-data` (built with a genisoimage-compatible tool, `qemu.iso_builder`).
 *
 * @module
 */
import { join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import { removeAll } from "./fsutil.ts";

/** user-data used when the request has none. */
export const DEFAULT_USER_DATA = "#cloud-config\n{}\n";

/** NoCloud meta-data: `instance-id: <vm id>\nlocal-hostname: <vm name>\n`. */
export function metaData(vmId: string, hostname: string): string {
  // Both are a UUID and a DNS label: plain YAML scalars, nothing to quote.
  return `instance-id: ${vmId}\nlocal-hostname: ${hostname}\n`;
}

/** Options of {@link buildSeedIso}. */
export interface SeedOptions {
  /** The ISO builder binary (`genisoimage`). */
  isoBuilder: string;
  /** VM id (instance-id). */
  vmId: string;
  /** VM name (local-hostname). */
  hostname: string;
  /** user-data verbatim; default {@link DEFAULT_USER_DATA}. */
  userData?: string;
  /** Output path of the ISO; its directory must exist. */
  output: string;
}

/**
 * Builds the seed ISO: `genisoimage -output <tmp> -volid cidata -joliet -rock user-data
 * meta-data` in a staging directory next to `output`, then renames it into place. The
 * staging files are removed.
 *
 * @throws ApiError `vm_create_failed` with the builder's stderr
 */
export async function buildSeedIso(opts: SeedOptions): Promise<void> {
  const dir = join(opts.output, "..");
  const stage = join(dir, `.seed-${crypto.randomUUID().slice(0, 8)}`);
  const tmpIso = join(dir, `.seed-${crypto.randomUUID().slice(0, 8)}.iso`);
  try {
    await Deno.mkdir(stage, { mode: 0o700 });
    await Deno.writeTextFile(join(stage, "user-data"), opts.userData ?? DEFAULT_USER_DATA);
    await Deno.writeTextFile(join(stage, "meta-data"), metaData(opts.vmId, opts.hostname));
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(opts.isoBuilder, {
        args: ["-output", tmpIso, "-volid", "cidata", "-joliet", "-rock", "user-data", "meta-data"],
        cwd: stage,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (e) {
      throw new ApiError(
        "vm_create_failed",
        `cannot run ${opts.isoBuilder}: ${(e as Error).message}`,
      );
    }
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n");
      throw new ApiError(
        "vm_create_failed",
        `${opts.isoBuilder} failed (exit code ${out.code}): ${err}`,
      );
    }
    await Deno.rename(tmpIso, opts.output);
  } catch (e) {
    if (e instanceof ApiError) throw e;
    throw new ApiError(
      "vm_create_failed",
      `cannot build seed ISO ${opts.output}: ${(e as Error).message}`,
    );
  } finally {
    await removeAll(stage).catch(() => {});
    await removeAll(tmpIso).catch(() => {});
  }
}
