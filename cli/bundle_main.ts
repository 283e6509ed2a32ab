/**
 * Entry point of the shipped `otherix` (scripts/compile.ts bundles this file): `main.ts` with
 * the commander program imported literally, so the bundler puts it (and each command group)
 * into chunks that load on demand.
 *
 * @module
 */
import { denoIo } from "./io.ts";
import { run } from "./main.ts";

Deno.exit(await run(Deno.args, denoIo(), () => import("./program.ts")));
