/**
 * `otherix token create|list|revoke`: long-lived API tokens (`otx_…`, spec "Option B").
 *
 * - `create --name N [--description D] [--expires-in 30d] [-o text|json|yaml]`: the plaintext
 *   token is printed once (only its SHA-256 is stored; it cannot be read back);
 * - `list [--user REF] [-o table|json|yaml]`: `ID NAME DESCRIPTION CREATED EXPIRES`, never a
 *   token; `--user` (admin) lists another user's;
 * - `revoke ID [--user REF]`: the token stops working at once; `--user` (admin) revokes
 *   another user's.
 *
 * @module
 */
import { type Command, Option } from "commander";
import {
  type ApiToken,
  ApiTokenCreateResponseSchema,
  ApiTokenSchema,
} from "../../shared/api/auth.ts";
import { connect, outputOption, parseDurationArg, seg } from "../common.ts";
import type { Io } from "../io.ts";
import {
  listEnvelope,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderTable,
} from "../render.ts";

/** The `token list` table. */
export function tokenTable(tokens: ApiToken[]): string {
  return renderTable(
    ["id", "name", "description", "created", "expires"],
    tokens.map((t) => [t.id, t.name, t.description ?? "", t.created_at, t.expires_at ?? "never"]),
  );
}

const tokensPath = (user?: string) =>
  user ? `/v1/users/${seg(user)}/api-tokens` : "/v1/users/me/api-tokens";

/** Registers `token` and its subcommands on `program`. */
export function registerTokenCommands(program: Command, io: Io): void {
  const token = program.command("token").description("manage your API tokens");

  token.command("create")
    .description("mint an API token (shown once)")
    .requiredOption("--name <name>", "a name for the token (e.g. ci-nightly)")
    .option("--description <text>", "what the token is for")
    .option(
      "--expires-in <duration>",
      "lifetime, e.g. 30d, 12h (at least 1m; default: no expiry)",
      parseDurationArg,
    )
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const body: Record<string, unknown> = { name: opts.name };
      if (opts.description !== undefined) body.description = opts.description;
      if (opts.expiresIn !== undefined) body.ttl_seconds = opts.expiresIn;
      const { data, raw } = await client.json(
        "POST",
        "/v1/users/me/api-tokens",
        ApiTokenCreateResponseSchema,
        { body },
      );
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") return io.out(renderAs(format, raw, String));
      io.out(renderKeyValues([
        ["token", data.plaintext_token],
        ["id", data.id],
        ["name", data.name],
        ["expires_at", data.expires_at ?? "never"],
      ]));
      io.out("note: the token is shown once and cannot be retrieved again; store it now\n");
    });

  token.command("list")
    .description("list API tokens (metadata only)")
    .option("--user <ref>", "another user's tokens (admin): user id or email")
    // `wide`: the table already shows every field of a token.
    .addOption(
      new Option(
        "-o, --output <format>",
        "output format (wide: same columns, every field is shown)",
      )
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll(tokensPath(opts.user), ApiTokenSchema);
      io.out(renderAs(opts.output, listEnvelope(raw), () => tokenTable(items)));
    });

  token.command("revoke")
    .description("revoke an API token: it stops working at once")
    .argument("<id>", "the token id (from `token list`)")
    .option("--user <ref>", "another user's token (admin): user id or email")
    .action(async (id: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      await client.text("DELETE", `${tokensPath(opts.user)}/${seg(id)}`);
      io.out(`api token revoked: ${id}\n`);
    });
}
