/**
 * Dev launcher behind `deno task otherix-api|otherix-agent|otherix -- ARGS…`: reads the config
 * the arguments name, derives the sandbox roots from it, and runs the entry point from source
 * under exactly the permission flags `scripts/permissions.ts` generates (the same generator
 * `deno task compile` bakes into the binaries). Signals are forwarded; the exit code is the
 * child's.
 *
 * @module
 */
import { isAbsolute, resolve } from "node:path";
import { apiSandboxRoots, loadApiConfig } from "../cp/config.ts";
import { agentSandboxRoots, loadAgentConfig } from "../agent/config.ts";
import { DEFAULT_AGENT_CONFIG_FILE, DEFAULT_API_CONFIG_FILE } from "../shared/constants.ts";
import { type Binary, denoRunArgs, type SandboxRoots, STANDARD_SANDBOX } from "./permissions.ts";

/** Value of `--config FILE` / `--config=FILE` in `args`, made absolute (and rewritten in place). */
export function configArg(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--config" && i + 1 < args.length) {
      args[i + 1] = resolve(args[i + 1]);
      return args[i + 1];
    }
    if (args[i].startsWith("--config=")) {
      const p = resolve(args[i].slice("--config=".length));
      args[i] = `--config=${p}`;
      return p;
    }
  }
  return undefined;
}

/**
 * Sandbox roots for running `binary` with `args` (reads the named config).
 *
 * @throws ConfigError when the config is unreadable or invalid
 */
export async function sandboxFor(binary: Binary, args: string[]): Promise<SandboxRoots> {
  if (binary === "otherix") return STANDARD_SANDBOX;
  const given = configArg(args);
  if (binary === "otherix-api") {
    const file = given ?? DEFAULT_API_CONFIG_FILE;
    return apiSandboxRoots(await loadApiConfig(file), file);
  }
  const file = given ?? DEFAULT_AGENT_CONFIG_FILE;
  const roots = agentSandboxRoots(await loadAgentConfig(file));
  const underConfig = isAbsolute(file) && file.startsWith(roots.config + "/");
  return { ...roots, extraRead: underConfig ? [] : [file] };
}

/** The binaries the launcher runs. */
export const BINARIES: readonly Binary[] = ["otherix-api", "otherix-agent", "otherix"];

/**
 * Runs `binary` from source under its sandbox with `args`, forwarding SIGINT/SIGTERM;
 * resolves to the child's exit code (1 when the config cannot be read).
 */
export async function runBinary(binary: Binary, args: string[]): Promise<number> {
  let roots: SandboxRoots;
  try {
    roots = await sandboxFor(binary, args);
  } catch (e) {
    console.error(`${binary}: ${(e as Error).message}`);
    return 1;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs(binary, roots, args),
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      try {
        child.kill(sig);
      } catch { /* already gone */ }
    });
  }
  return (await child.status).code;
}

/** Parses `BINARY [--] ARGS…` and runs it; exits with its code. */
export async function main(argv: string[]): Promise<never> {
  const [binary, ...rest] = argv;
  const args = rest[0] === "--" ? rest.slice(1) : rest;
  if (!BINARIES.includes(binary as Binary)) {
    console.error(`usage: deno run -A main.ts ${BINARIES.join("|")} [--] ARGS…`);
    Deno.exit(2);
  }
  Deno.exit(await runBinary(binary as Binary, args));
}

if (import.meta.main) await main(Deno.args);
