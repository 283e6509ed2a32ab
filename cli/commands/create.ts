/**
 * `otherix create -f FILE… [--wait] [--wait-timeout D]` (spec 001 "Declarative manifests"):
 * creates every resource of the manifests, ordered Network → StoragePool → VM; every resource
 * must be new (`vm_already_exists` / `conflict` otherwise, before anything is created). The
 * engine (cli/manifests/engine.ts) checks every document first and reports a failure midway
 * with what was created.
 *
 * @module
 */
import type { Command } from "commander";
import { connect, waitTimeoutOption } from "../common.ts";
import type { Io } from "../io.ts";
import { readManifests } from "../manifests/documents.ts";
import { applyManifests } from "../manifests/engine.ts";

/** Collects a repeatable option's values. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/**
 * Registers a manifest command (`create`, `apply`) on `program`: `-f FILE…` (repeatable; `-`
 * is stdin), `--wait`, `--wait-timeout`, run by the manifest engine in `mode`.
 */
export function registerManifestCommand(
  program: Command,
  io: Io,
  name: "create" | "apply",
  description: string,
): void {
  program.command(name)
    .description(description)
    .requiredOption(
      "-f, --filename <file>",
      "manifest file, multi-document YAML (repeatable; - reads stdin)",
      collect,
    )
    .option("--wait", "wait for VM create tasks and pool reconciliation")
    .addOption(waitTimeoutOption())
    .action(async (opts, cmd: Command) => {
      const docs = await readManifests(io, opts.filename);
      const client = await connect(cmd, io);
      await applyManifests(client, io, docs, {
        mode: name,
        wait: Boolean(opts.wait),
        waitTimeoutSeconds: opts.waitTimeout,
      });
    });
}

/** Registers `create` on `program`. */
export function registerCreateCommand(program: Command, io: Io): void {
  registerManifestCommand(
    program,
    io,
    "create",
    "create the resources of manifest files (Network → StoragePool → VM; all must be new)",
  );
}
