/**
 * `otherix audit list [--user REF] [--action A] [--limit N] [--cursor C] [-o table|json|yaml]`
 * (admin; shared/api/audit.ts): the audit log, newest first — `TIME USER ACTION TARGET RESULT
 * STATUS SOURCE`.
 *
 * @module
 */
import { type Command, Option } from "commander";
import { type AuditEntry, AuditEntrySchema } from "../../shared/api/audit.ts";
import { connect, parseIntArg, printList } from "../common.ts";
import type { Io } from "../io.ts";
import { renderTable } from "../render.ts";

/** The `audit list` table. */
export function auditTable(entries: AuditEntry[], wide = false): string {
  const headers = ["time", "user", "action", "target", "result", "status", "source"];
  return renderTable(
    wide ? [...headers, "method", "path", "id"] : headers,
    entries.map((e) => {
      const row = [
        e.at,
        e.user_email ?? e.user_id ?? "-",
        e.action,
        e.target ?? "-",
        e.code ? `${e.result} (${e.code})` : e.result,
        String(e.status),
        e.source,
      ];
      return wide ? [...row, e.method, e.path, e.id] : row;
    }),
  );
}

/** Registers `audit list` on `program`. */
export function registerAuditCommands(program: Command, io: Io): void {
  const audit = program.command("audit").description("the audit log (admin)");
  audit.command("list")
    .description("list audit entries, newest first")
    .option("--user <ref>", "only this user's entries (user id or email)")
    .option("--action <action>", "only this action (e.g. vm.delete, auth.login)")
    .option(
      "--limit <n>",
      "one page of at most N entries (with --cursor for the next)",
      parseIntArg,
    )
    .option("--cursor <cursor>", "continue a paged listing")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds METHOD, PATH, ID)")
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      await printList(await connect(cmd, io), io, {
        path: "/v1/audit",
        item: AuditEntrySchema,
        filters: { user: opts.user, action: opts.action },
        limit: opts.limit,
        cursor: opts.cursor,
        format: opts.output,
        table: (items) => auditTable(items, opts.output === "wide"),
      });
    });
}
