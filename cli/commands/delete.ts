/**
 * `otherix delete -f FILE… [--force] [--wait] [--wait-timeout D]` (spec 001 "Declarative
 * manifests"): deletes the resources of the manifests in reverse order (VM → StoragePool →
 * Network), after a confirmation unless `--force`; resources already gone are skipped. VM
 * deletions are waited for before pools and networks go (and with `--wait`).
 *
 * @module
 */
import type { Command } from "commander";
import { connect, waitTimeoutOption } from "../common.ts";
import type { Io } from "../io.ts";
import { readManifests } from "../manifests/documents.ts";
import { deleteManifests } from "../manifests/engine.ts";
import { collect } from "./create.ts";

/** Registers `delete` on `program`. */
export function registerDeleteCommand(program: Command, io: Io): void {
  program.command("delete")
    .description(
      "delete the resources of manifest files in reverse order (VM → StoragePool → Network;" +
        " asks for confirmation unless --force)",
    )
    .requiredOption(
      "-f, --filename <file>",
      "manifest file, multi-document YAML (repeatable; - reads stdin)",
      collect,
    )
    .option("--force", "do not ask for confirmation")
    .option("--wait", "also wait until the last VMs are gone")
    .addOption(waitTimeoutOption())
    .action(async (opts, cmd: Command) => {
      const docs = await readManifests(io, opts.filename);
      const client = await connect(cmd, io);
      await deleteManifests(client, io, docs, {
        force: Boolean(opts.force),
        wait: Boolean(opts.wait),
        waitTimeoutSeconds: opts.waitTimeout,
      });
    });
}
