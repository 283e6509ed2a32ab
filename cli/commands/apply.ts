/**
 * `otherix apply -f FILE… [--wait] [--wait-timeout D]` (issue 8, beyond the spec): creates what
 * the manifests declare and the cluster lacks, reports `<kind>/<name> unchanged` for what
 * exists as declared, and refuses (`conflict`, naming the field, before anything is created)
 * a resource whose immutable fields differ — Otherix changes nothing in place. Only fields a
 * manifest sets are compared (`userData` and `sshAuthorizedKeys` cannot be: the API does not
 * serve them back). So a homelab's whole setup can live in one file under version control.
 *
 * @module
 */
import type { Command } from "commander";
import type { Io } from "../io.ts";
import { registerManifestCommand } from "./create.ts";

/** Registers `apply` on `program`. */
export function registerApplyCommand(program: Command, io: Io): void {
  registerManifestCommand(
    program,
    io,
    "apply",
    "create what manifest files declare and the cluster lacks; unchanged resources are " +
      "reported, changes to immutable fields refused",
  );
}
