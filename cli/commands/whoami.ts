/**
 * `otherix whoami [-o text|json|yaml]`: the user the current credentials belong to
 * (`GET /v1/users/me`): email, role, id, and the server asked.
 *
 * @module
 */
import type { Command } from "commander";
import { UserSchema } from "../../shared/api/auth.ts";
import { connect, outputOption } from "../common.ts";
import type { Io } from "../io.ts";
import { type OutputFormat, renderAs, renderKeyValues } from "../render.ts";

/** Registers `whoami` on `program`. */
export function registerWhoamiCommand(program: Command, io: Io): void {
  program.command("whoami")
    .description("show who the current credentials belong to")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", "/v1/users/me", UserSchema);
      io.out(renderAs(opts.output as OutputFormat, raw, () =>
        renderKeyValues([
          ["email", data.email],
          ["role", data.role],
          ["id", data.id],
          ["server", client.endpoint],
        ])));
    });
}
