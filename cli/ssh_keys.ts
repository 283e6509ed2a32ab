/**
 * `vm create --ssh-key` values: `@FILE` reads a public key file (`~/` is expanded; every
 * non-empty line not starting with `#` is a key, as in `authorized_keys`), anything else is
 * one key inline (`ssh-ed25519 AAAA… comment`). The control plane validates each key
 * (shared/api/cloud_config.ts); the CLI only refuses a private key file before it leaves the
 * machine.
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import type { Io } from "./io.ts";

/** `~/x` → `$HOME/x`. */
function expandHome(path: string, io: Io): string {
  if (path !== "~" && !path.startsWith("~/")) return path;
  const home = io.env("HOME");
  if (!home) throw new UsageError(`cannot expand ${path}: HOME is not set`);
  return home + path.slice(1);
}

/**
 * The keys of the `--ssh-key` values, in order.
 *
 * @throws UsageError for an unreadable file, a file without keys, or a private key (whose
 *   content is never sent nor printed)
 */
export async function readSshKeys(values: readonly string[], io: Io): Promise<string[]> {
  const keys: string[] = [];
  for (const value of values) {
    if (!value.startsWith("@")) {
      keys.push(value.trim());
      continue;
    }
    const path = expandHome(value.slice(1), io);
    if (path === "") throw new UsageError("--ssh-key @<file>: missing file name");
    let text: string;
    try {
      text = await io.readTextFile(path);
    } catch (e) {
      throw new UsageError(`cannot read --ssh-key file ${path}: ${(e as Error).message}`);
    }
    if (text.includes("PRIVATE KEY")) {
      throw new UsageError(
        `--ssh-key file ${path} holds a private key: pass the public key (${path}.pub)`,
      );
    }
    const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) =>
      l !== "" && !l.startsWith("#")
    );
    if (lines.length === 0) throw new UsageError(`--ssh-key file ${path} holds no key`);
    keys.push(...lines);
  }
  return keys;
}
