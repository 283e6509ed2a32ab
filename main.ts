/**
 * Development entry point: `deno run -A main.ts otherix-api|otherix-agent|otherix [--] ARGS…`
 * runs that binary from source under its permission sandbox (the same as
 * `deno task otherix-api` etc.; see `scripts/run.ts`).
 *
 * The type-only imports make `deno check main.ts` cover all three binaries.
 *
 * @module
 */
import type {} from "./cp/main.ts";
import type {} from "./agent/main.ts";
import type {} from "./cli/main.ts";
import { main } from "./scripts/run.ts";

if (import.meta.main) await main(Deno.args);
