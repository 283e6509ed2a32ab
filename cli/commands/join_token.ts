/**
 * `otherix node join-token create|list|revoke` (spec: "Step 1 — run seed-dev": "Mints a join
 * token via otherix node join-token create --node-name node-dev --ttl 10m --output json"):
 *
 * - `create --node-name N [--ttl D] [--max-uses K] [-o text|json|yaml]`: the plaintext token
 *   is printed once (it cannot be read back);
 * - `list [-o table|json|yaml]`: `ID NODE USES EXPIRES CREATED_BY`, metadata only;
 * - `revoke ID`: deletes the token; an agent presenting it afterwards is refused.
 *
 * Ranges (`--max-uses` ≥ 1, `--ttl` ≤ 7 days, the id being a UUID) are the server's to check:
 * it answers `validation_failed` and changes nothing. A malformed `--ttl` / `--max-uses` is a
 * usage error before any request.
 *
 * @module
 */
import { type Command, Option } from "commander";
import {
  type JoinToken,
  JoinTokenCreateResponseSchema,
  JoinTokenSchema,
} from "../../shared/api/nodes.ts";
import { connect, outputOption, parseDurationArg, parseIntArg, seg } from "../common.ts";
import { formatAge } from "../duration.ts";
import type { Io } from "../io.ts";
import {
  listEnvelope,
  type OutputFormat,
  renderAs,
  renderKeyValues,
  renderTable,
} from "../render.ts";

const PATH = "/v1/nodes/join-tokens";

/**
 * The `EXPIRES` cell at `now` (ms since the epoch): `in 9m` while valid, `expired 5m ago`
 * after `expires_at` (uses are the `USES` column's business).
 */
export function expiresCell(expiresAt: string, now: number): string {
  const at = Date.parse(expiresAt);
  if (Number.isNaN(at)) return "-";
  return at > now
    ? `in ${formatAge(new Date(now), at)}`
    : `expired ${formatAge(expiresAt, now)} ago`;
}

/**
 * The `list` table: `ID NODE USES EXPIRES CREATED_BY`, `USES` as `<uses>/<max_uses>` (so
 * `1/1` is used up), `CREATED_BY` the creator's user id. Never a token.
 */
export function joinTokenTable(tokens: JoinToken[], now: number, wide = false): string {
  const headers = ["id", "node", "uses", "expires", "created_by"];
  return renderTable(
    wide ? [...headers, "created", "expired"] : headers,
    tokens.map((t) => {
      const row = [
        t.id,
        t.node_name,
        `${t.uses}/${t.max_uses}`,
        expiresCell(t.expires_at, now),
        t.created_by,
      ];
      return wide ? [...row, t.created_at, t.expired ? "yes" : "no"] : row;
    }),
  );
}

/** Registers `join-token create|list|revoke` under the `node` command. */
export function registerJoinTokenCommands(node: Command, io: Io): void {
  const joinToken = node.command("join-token").description("manage node join tokens");

  joinToken.command("create")
    .description("mint a join token an agent redeems to register as a node")
    .requiredOption("--node-name <name>", "the node name the token may register")
    .option(
      "--ttl <duration>",
      "token lifetime, e.g. 10m, 1h (server default 10m)",
      parseDurationArg,
    )
    .option("--max-uses <n>", "how many agents may redeem it (server default 1)", parseIntArg)
    .addOption(outputOption("text", ["text", "json", "yaml"]))
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const body: Record<string, unknown> = { node_name: opts.nodeName };
      if (opts.ttl !== undefined) body.ttl_seconds = opts.ttl;
      if (opts.maxUses !== undefined) body.max_uses = opts.maxUses;
      const { data, raw } = await client.json("POST", PATH, JoinTokenCreateResponseSchema, {
        body,
      });
      const format = opts.output as OutputFormat;
      if (format === "json" || format === "yaml") return io.out(renderAs(format, raw, String));
      io.out(renderKeyValues([
        ["token", data.token],
        ["node", data.node_name],
        ["expires_at", data.expires_at],
        ["max_uses", data.max_uses],
        ["ca_fingerprint", data.ca_fingerprint],
      ]));
      io.out("note: the token is shown once and cannot be retrieved again; store it now\n");
    });

  joinToken.command("list")
    .description("list join tokens (metadata only; expired and used-up ones until revoked)")
    .addOption(
      new Option("-o, --output <format>", "output format (wide: adds CREATED, EXPIRED)")
        .choices(["table", "wide", "json", "yaml"]).default("table"),
    )
    .action(async (opts, cmd: Command) => {
      const client = await connect(cmd, io);
      const { items, raw } = await client.listAll(PATH, JoinTokenSchema);
      const format = opts.output as OutputFormat;
      io.out(renderAs(
        format,
        listEnvelope(raw),
        () => joinTokenTable(items, io.now(), opts.output === "wide"),
      ));
    });

  joinToken.command("revoke")
    .description("revoke a join token: an agent presenting it is refused from now on")
    .argument("<id>", "the token id (from `node join-token list` or `create`)")
    .action(async (id: string, _opts, cmd: Command) => {
      const client = await connect(cmd, io);
      await client.text("DELETE", `${PATH}/${seg(id)}`);
      io.out(`join token revoked: ${id}\n`);
    });
}
