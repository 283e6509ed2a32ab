/**
 * `deno task compile [BINARY…]`: writes `bin/otherix-api`, `bin/otherix-agent`, `bin/otherix`
 * with each binary's permission flags for the standard roots baked in (from
 * `scripts/permissions.ts`, the same generator the dev tasks and tests use).
 *
 * `otherix` is compiled from a bundle (issue 10, CLI start-up): `deno bundle --code-splitting`
 * first ({@link bundleCli}), then `deno compile` of the bundle. Run from source, each npm
 * package pays Deno's npm/CommonJS resolution per module; bundled, the CLI's start-up path
 * (`vm list`, `vm get`, `__complete`) is a few small chunks and every other command loads its
 * own chunks on demand. The daemons are compiled from source (their start-up is not on a
 * user's hot path).
 *
 * `deno compile` needs Deno's runtime (`denort`), which it downloads from Deno's own host; on
 * an offline machine point `DENORT_BIN` at a `denort` binary of the same Deno version
 * (`deno compile` reads it itself).
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

/**
 * Entry of the CLI bundle: `cli/main.ts` (ENTRY_POINTS) with the commander program imported
 * literally, so the bundler follows it.
 */
export const CLI_BUNDLE_ENTRY = "cli/bundle_main.ts";

/**
 * The `yaml` package's own ES-module build (`browser/index.js`: the same library without
 * `process`), the file of the version deno.json pins in the local `node_modules`; undefined
 * when deno.json pins none or the file is not there.
 */
export async function yamlEsmBuild(): Promise<string | undefined> {
  const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/deno.json`));
  const version = /^npm:yaml@([\w.-]+)$/.exec(config.imports?.yaml ?? "")?.[1];
  if (!version) return undefined;
  const file = `${REPO_ROOT}/node_modules/.deno/yaml@${version}/node_modules/yaml/browser/index.js`;
  return await Deno.stat(file).then(() => file, () => undefined);
}

/**
 * Writes the import map the bundle is built with into `file`: deno.json's `imports`, with
 * `yaml` pointing at its ES-module build ({@link yamlEsmBuild}). The package's default
 * (Node) build is CommonJS reading `process.env`, which in a bundle loads `node:module` and
 * `node:process` — Node's compatibility layer, ~50 ms of every command that reads the config
 * file. Without that file the map keeps deno.json's `yaml` (slower, same behaviour).
 *
 * @returns whether `yaml` was redirected
 */
export async function writeBundleImportMap(file: string): Promise<boolean> {
  const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/deno.json`));
  const imports: Record<string, string> = { ...config.imports };
  const esm = await yamlEsmBuild();
  if (esm) imports.yaml = esm;
  await Deno.writeTextFile(file, JSON.stringify({ imports }, null, 2) + "\n");
  return esm !== undefined;
}

/**
 * The `deno bundle` argv (without `deno`) that writes the CLI's chunks into `outDir`, with the
 * import map `importMap` ({@link writeBundleImportMap}) when given.
 */
export function bundleArgs(outDir: string, importMap?: string): string[] {
  return [
    "bundle",
    ...(importMap ? ["--import-map", importMap] : []),
    "--platform",
    "deno",
    "--minify",
    "--code-splitting",
    "--outdir",
    outDir,
    `${REPO_ROOT}/${CLI_BUNDLE_ENTRY}`,
  ];
}

/**
 * Bundles the CLI into `outDir` (created if missing) and returns the entry file
 * (`<outDir>/bundle_main.js`). `yaml` is bundled from its ES-module build
 * ({@link writeBundleImportMap}).
 *
 * After bundling, every chunk's bare `import "./<runtime chunk>"` is removed. Deno's bundler
 * puts the `require` shim of the CommonJS packages (`createRequire` from `node:module`) into
 * one runtime chunk and makes every entry and dynamic chunk import it for its side effect;
 * loading `node:module` starts Node's compatibility layer (~40 ms), so `vm list` would pay
 * for it without using any CommonJS. The removal is safe: the shim's only side effect is
 * creating `require`, and every chunk that uses it imports it by name (which still loads the
 * runtime chunk first).
 *
 * @throws Error when `deno bundle` fails or writes no `bundle_main.js`
 */
export async function bundleCli(outDir: string): Promise<string> {
  await Deno.mkdir(outDir, { recursive: true });
  const importMap = await Deno.makeTempFile({ prefix: "otherix-bundle-", suffix: ".json" });
  try {
    if (!await writeBundleImportMap(importMap)) {
      console.error(
        "bundle: yaml's ES-module build is not in node_modules (run `deno install`): the " +
          "bundle uses its CommonJS build (slower start-up when a config file is read)",
      );
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: bundleArgs(outDir, importMap),
      cwd: REPO_ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`deno bundle failed: ${new TextDecoder().decode(out.stderr)}`);
    }
  } finally {
    await Deno.remove(importMap).catch(() => {});
  }
  const files: string[] = [];
  for await (const e of Deno.readDir(outDir)) {
    if (e.isFile && e.name.endsWith(".js")) {
      files.push(e.name);
    }
  }
  if (!files.includes("bundle_main.js")) {
    throw new Error(`deno bundle wrote no bundle_main.js in ${outDir}`);
  }
  const texts = new Map<string, string>();
  for (const f of files) texts.set(f, await Deno.readTextFile(`${outDir}/${f}`));
  const runtime = [...texts].filter(([, t]) => /createRequire\b[^;]*from\s*"node:module"/.test(t))
    .map(([f]) => f);
  for (const chunk of runtime) {
    const bare = new RegExp(`import\\s*"\\./${chunk.replaceAll(".", "\\.")}";?`, "g");
    for (const [f, text] of texts) {
      const stripped = text.replace(bare, "");
      if (stripped !== text) await Deno.writeTextFile(`${outDir}/${f}`, stripped);
    }
  }
  return `${outDir}/bundle_main.js`;
}

/**
 * The `deno compile` argv (without `deno`) for one binary; `entry` overrides the source entry
 * point (the CLI's bundle, whose directory is embedded whole: its chunks load on demand).
 */
export function compileArgs(
  binary: Binary,
  outDir = `${REPO_ROOT}/bin`,
  entry?: string,
): string[] {
  const bundled = entry !== undefined;
  return [
    "compile",
    ...permissionFlags(binary, STANDARD_SANDBOX),
    // A bundle needs no import map, lock file or node_modules: compile it on its own.
    ...(bundled ? ["--no-config", "--include", entry.replace(/\/[^/]*$/, "")] : []),
    "--output",
    `${outDir}/${binary}`,
    entry ?? `${REPO_ROOT}/${ENTRY_POINTS[binary]}`,
  ];
}

async function compile(binary: Binary): Promise<number> {
  console.error(`compile: ${binary}`);
  let bundleDir: string | undefined;
  try {
    let entry: string | undefined;
    if (binary === "otherix") {
      bundleDir = await Deno.makeTempDir({ prefix: "otherix-bundle-" });
      entry = await bundleCli(bundleDir);
    }
    const { code } = await new Deno.Command(Deno.execPath(), {
      args: compileArgs(binary, `${REPO_ROOT}/bin`, entry),
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    return code;
  } finally {
    if (bundleDir) await Deno.remove(bundleDir, { recursive: true }).catch(() => {});
  }
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
    const code = await compile(b);
    if (code !== 0) {
      console.error(
        `compile: ${b} failed. deno compile downloads Deno's runtime (denort); offline, set ` +
          "DENORT_BIN to a denort binary of the same version.",
      );
      Deno.exit(code);
    }
  }
}
