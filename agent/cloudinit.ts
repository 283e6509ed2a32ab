/**
 * cloud-init NoCloud seed ISOs: an ISO 9660 volume labelled `cidata` holding `user-data`,
 * `meta-data` and, for a VM on networks, `network-config` (version 2; built with a
 * genisoimage-compatible tool, `qemu.iso_builder`).
 *
 * @module
 */
import { join } from "node:path";
import type { AgentNic } from "../shared/api/network_agent.ts";
import { parseCidr } from "../shared/api/networks.ts";
import { ApiError } from "../shared/errors.ts";
import { removeAll } from "./fsutil.ts";

/** user-data used when the request has none. */
export const DEFAULT_USER_DATA = "#cloud-config\n{}\n";

/** NoCloud meta-data: `instance-id: <vm id>\nlocal-hostname: <vm name>\n`. */
export function metaData(vmId: string, hostname: string): string {
  // Both are a UUID and a DNS label: plain YAML scalars, nothing to quote.
  return `instance-id: ${vmId}\nlocal-hostname: ${hostname}\n`;
}

/**
 * The NoCloud `network-config` (version 2) of a VM's NICs, one `ethernets` entry per NIC
 * (`nic<i>`) matched by MAC:
 * - with an IPAM address: `addresses: [<ip>/<prefix>]`, `mtu`; on a managed bridge also
 *   `nameservers` (the gateway) and, for the first such NIC only, a default route
 *   (`routes: [{to: 0.0.0.0/0, via: <gateway>}]`); an overlay has no gateway;
 * - without (an unmanaged bridge): `dhcp4: true` (the LAN's DHCP), and `mtu` when set.
 *
 * Every value is an address, a MAC or a number (validated by the agent protocol), so the
 * YAML needs no quoting beyond the MAC.
 */
export function networkConfigOf(nics: AgentNic[]): string {
  const lines = ["version: 2", "ethernets:"];
  let routed = false;
  for (const nic of [...nics].sort((a, b) => a.index - b.index)) {
    const n = nic.network;
    lines.push(`  nic${nic.index}:`, "    match:", `      macaddress: "${nic.mac}"`);
    if (n.mtu !== null) lines.push(`    mtu: ${n.mtu}`);
    const subnet = n.subnet !== null ? parseCidr(n.subnet) : null;
    if (nic.address === null || subnet === null || typeof subnet === "string") {
      lines.push("    dhcp4: true");
      continue;
    }
    lines.push("    dhcp4: false", "    addresses:", `      - ${nic.address}/${subnet.prefix}`);
    if (n.gateway !== null) {
      if (!routed) {
        lines.push("    routes:", "      - to: 0.0.0.0/0", `        via: ${n.gateway}`);
        routed = true;
      }
      lines.push("    nameservers:", "      addresses:", `        - ${n.gateway}`);
    }
  }
  return lines.join("\n") + "\n";
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
  /** `network-config` ({@link networkConfigOf}); omitted: none (cloud-init's default). */
  networkConfig?: string;
  /** Output path of the ISO; its directory must exist. */
  output: string;
}

/**
 * Builds the seed ISO: `genisoimage -output <tmp> -volid cidata -joliet -rock user-data
 * meta-data [network-config]` in a staging directory next to `output`, then renames it into
 * place. The staging files are removed.
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
    const files = ["user-data", "meta-data"];
    if (opts.networkConfig !== undefined) {
      await Deno.writeTextFile(join(stage, "network-config"), opts.networkConfig);
      files.push("network-config");
    }
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(opts.isoBuilder, {
        args: ["-output", tmpIso, "-volid", "cidata", "-joliet", "-rock", ...files],
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
