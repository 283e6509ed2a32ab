/**
 * `otherix user create|list|get|set-role|reset-password|delete` (admin; shared/api/users.ts):
 *
 * - `create EMAIL --role R [--password P]`: the password comes from `--password`, else
 *   `$OTHERIX_USER_PASSWORD`, else a masked prompt (asked twice) on a terminal;
 * - `list [--limit N] [--cursor C] [-o table|json|yaml]`: `ID EMAIL ROLE CREATED`;
 * - `get REF [-o text|json|yaml]` (REF: a user id or an email);
 * - `set-role REF ROLE`; `reset-password REF [--password P]` (as for create);
 * - `delete REF [--force]` (asks for confirmation unless `--force`; the user's API tokens go
 *   too).
 *
 * The last admin can be neither demoted nor deleted: `api_error: conflict: …`. Bad input
 * (malformed email, short password, unknown role) is the server's `validation_failed`.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { type User, UserSchema } from "../../shared/api/auth.ts";
import { connect, outputOption, parseIntArg, printList, seg } from "../common.ts";
import { UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { confirm } from "../prompt.ts";
import { type OutputFormat, renderAs, renderKeyValues, renderTable } from "../render.ts";

/** Env var a new user's password may come from (scripts). */
export const USER_PASSWORD_ENV = "OTHERIX_USER_PASSWORD";

/** The `user list` table. */
export function userTable(users: User[]): string {
  return renderTable(
    ["id", "email", "role", "created"],
    users.map((u) => [u.id, u.email, u.role, u.created_at]),
  );
}

/** `user get` as `key: value` lines. */
export function userKeyValues(u: User): string {
  return renderKeyValues([
    ["id", u.id],
    ["email", u.email],
    ["role", u.role],
    ["created_at", u.created_at],
  ]);
}

/**
 * A new password: `flag`, else `$OTHERIX_USER_PASSWORD`, else prompted twice on a terminal.
 *
 * @throws UsageError without a terminal to prompt on, or when the two entries differ
 */
export async function newPassword(io: Io, flag: string | undefined, who: string): Promise<string> {
  const given = flag ?? io.env(USER_PASSWORD_ENV);
  if (given) return given;
  if (!io.stdinIsTerminal()) {
    throw new UsageError(
      `missing --password (or $${USER_PASSWORD_ENV}): stdin is not a terminal, so it cannot ` +
        "be prompted for",
    );
  }
  const first = await io.prompter.secret(`New password for ${who}: `);
  if (!first) throw new UsageError("no password given");
  const again = await io.prompter.secret("Repeat the password: ");
  if (again !== first) throw new UsageError("the passwords differ");
  return first;
}

/** Registers `user` and its subcommands on `program`. */
export function registerUserCommands(program: Command, io: Io): void {
  const user = program.command("user").description("manage users (admin)");

  user.command("create")
    .description("create a user with a role")
    .argument("<email>", "the user's email (their login)")
    .requiredOption("--role <role>", "admin, operator, developer or viewer")
    .option("--password <password>", `initial password (or $${USER_PASSWORD_ENV}, or a prompt)`)
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (email: string, opts, cmd: Command) => {
      const password = await newPassword(io, opts.password, email);
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("POST", "/v1/users", UserSchema, {
        body: { email, password, role: opts.role },
      });
      io.out(renderAs(opts.output as OutputFormat, raw, () => userKeyValues(data)));
    });

  user.command("list")
    .description("list users")
    .option("--limit <n>", "one page of at most N users (with --cursor for the next)", parseIntArg)
    .option("--cursor <cursor>", "continue a paged listing")
    // `wide`: the table already shows every field of a user.
    .addOption(
      new Option(
        "-o, --output <format>",
        "output format (wide: same columns, every field is shown)",
      )
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      await printList(await connect(cmd, io), io, {
        path: "/v1/users",
        item: UserSchema,
        filters: {},
        limit: opts.limit,
        cursor: opts.cursor,
        format: opts.output,
        table: userTable,
      });
    });

  user.command("get")
    .description("show a user")
    .argument("<ref>", "user id or email")
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (ref: string, opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data, raw } = await client.json("GET", `/v1/users/${seg(ref)}`, UserSchema);
      io.out(renderAs(opts.output as OutputFormat, raw, () => userKeyValues(data)));
    });

  user.command("set-role")
    .description("change a user's role (effective on their next request)")
    .argument("<ref>", "user id or email")
    .argument("<role>", "admin, operator, developer or viewer")
    .action(async (ref: string, role: string, _opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { data } = await client.json("PUT", `/v1/users/${seg(ref)}/role`, UserSchema, {
        body: { role },
      });
      io.out(`user ${data.email} role: ${data.role}\n`);
    });

  user.command("reset-password")
    .description("set a user's password")
    .argument("<ref>", "user id or email")
    .option("--password <password>", `the new password (or $${USER_PASSWORD_ENV}, or a prompt)`)
    .action(async (ref: string, opts, cmd: Command) => {
      const password = await newPassword(io, opts.password, ref);
      const client = await connect(cmd, io);
      await client.text("PUT", `/v1/users/${seg(ref)}/password`, { body: { password } });
      io.out(`password reset: ${ref}\n`);
    });

  user.command("delete")
    .description("delete a user and their API tokens (asks for confirmation unless --force)")
    .argument("<ref>", "user id or email")
    .option("--force", "do not ask for confirmation")
    .action(async (ref: string, opts, cmd: Command) => {
      if (!opts.force) {
        if (!io.stdinIsTerminal()) {
          throw new UsageError(
            `refusing to delete user "${ref}" without confirmation: stdin is not a terminal ` +
              "(pass --force)",
          );
        }
        if (!(await confirm(io.prompter, `Delete user "${ref}" and their API tokens?`))) {
          throw new UsageError(`aborted: user "${ref}" was not deleted`);
        }
      }
      const client = await connect(cmd, io);
      await client.text("DELETE", `/v1/users/${seg(ref)}`);
      io.out(`user deleted: ${ref}\n`);
    });
}
