/**
 * `deno task compile [BINARY…]`: writes `bin/otherix-api`, `bin/otherix-agent`, `bin/otherix`
 * with each binary's permission flags for the standard roots baked in (from
 * `scripts/permissions.ts`, the same generator the dev tasks and tests use).
 *
 * `deno compile` needs Deno's runtime (`denort`), which it downloads from Deno's own host; on
 * an offline machine point `DENORT_BIN` at a `denort` binary of the same Deno version.
 *
 * @module
 */
import {
  type Binary,
  ENTRY_POINTS,
  permissionFlags,
  REPO_ROOT,
  STANDARD_SANDBOX,
} from "./permissions.ts";

const ALL: Binary[] = ["otherix-api", "otherix-agent", "otherix"];

/** The `deno compile` argv (without `deno`) for one binary. */
export function compileArgs(binary: Binary, outDir = `${REPO_ROOT}/bin`): string[] {
  return [
    "compile",
    ...permissionFlags(binary, STANDARD_SANDBOX),
    "--output",
    `${outDir}/${binary}`,
    `${REPO_ROOT}/${ENTRY_POINTS[binary]}`,
  ];
}

if (import.meta.main) {
  const wanted = (Deno.args.length ? Deno.args : ALL) as Binary[];
  for (const b of wanted) {
    if (!ALL.includes(b)) {
      console.error(`compile: unknown binary ${b} (expected one of ${ALL.join(", ")})`);
      Deno.exit(2);
    }
  }
  if (Deno.env.get("DENORT_BIN")) {
    console.error(`compile: using DENORT_BIN=${Deno.env.get("DENORT_BIN")}`);
  }
  for (const b of wanted) {
    console.error(`compile: ${b}`);
    const { code } = await new Deno.Command(Deno.execPath(), {
      args: compileArgs(b),
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (code !== 0) {
      console.error(
        `compile: ${b} failed. deno compile downloads Deno's runtime (denort); offline, set ` +
          "DENORT_BIN to a denort binary of the same version.",
      );
      Deno.exit(code);
    }
  }
}
