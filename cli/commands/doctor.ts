/**
 * `otherix doctor [--node NAME] [-o text|json]`: runs spec 000's troubleshooting reference as
 * checks (cli/doctor/checks.ts) and prints, for each, pass or the symptom → likely cause → how
 * to recover. Exit status 1 when any check fails (warnings do not count).
 *
 * @module
 */
import type { Command } from "commander";
import { runChecks } from "../doctor/checks.ts";
import { renderText, summarize } from "../doctor/report.ts";
import { globalsOf, outputOption } from "../common.ts";
import { CliError } from "../errors.ts";
import type { Io } from "../io.ts";
import { renderJson } from "../render.ts";

/** `doctor` found failures: one stderr line, exit status 1. */
export class DoctorFailedError extends CliError {
  constructor(readonly failed: number) {
    super(`${failed} check(s) failed`);
    this.name = "DoctorFailedError";
  }

  render(): string {
    return `error: doctor: ${this.message}`;
  }
}

/** Registers `doctor` on `program`. */
export function registerDoctorCommand(program: Command, io: Io): void {
  program.command("doctor")
    .description("check the CLI config, the control plane, nodes, pools and recent tasks")
    .option("--node <name>", "only run the per-node checks for this node")
    .addOption(outputOption("text", ["text", "json"]))
    .addHelpText(
      "after",
      "\nExamples:\n  otherix doctor\n  otherix doctor --node node-a -o json\n",
    )
    .action(async (opts: { node?: string; output: string }, cmd: Command) => {
      const g = globalsOf(cmd);
      const results = await runChecks({
        flags: { config: g.config, cluster: g.cluster, endpoint: g.endpoint, token: g.token },
        timeoutMs: g.requestTimeout * 1000,
        node: opts.node,
        io,
      });
      const summary = summarize(results);
      io.out(
        opts.output === "json" ? renderJson({ checks: results, summary }) : renderText(results),
      );
      if (summary.fail > 0) throw new DoctorFailedError(summary.fail);
    });
}
