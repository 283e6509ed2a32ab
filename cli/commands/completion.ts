/**
 * `otherix completion bash|zsh|fish`: prints the shell completion script (commands, flags,
 * flag values and live resource names; cli/completion/). The hidden `otherix __complete KIND`
 * prints the names of one resource kind (`vm`, `node`, `pool`, `network`), one per line, for
 * those scripts: at most 2 s, and nothing at all (exit 0) on any error, so a Tab never prints
 * noise or hangs.
 *
 * @module
 */
import type { Command } from "commander";
import { globalsOf } from "../common.ts";
import { COMPLETE_TIMEOUT_SECONDS, printNames } from "../complete_names.ts";
import { completionScript, type Shell, SHELLS } from "../completion/scripts.ts";
import { completionTree } from "../completion/tree.ts";
import type { Io } from "../io.ts";

export { COMPLETE_TIMEOUT_SECONDS };

/** Registers `completion` and the hidden `__complete` on `program` (build it fully first). */
export function registerCompletionCommand(program: Command, io: Io): void {
  program.command("completion")
    .description("print the shell completion script")
    .argument("<shell>", `one of ${SHELLS.join(", ")}`)
    .addHelpText(
      "after",
      "\nLoad it in the current shell: source <(otherix completion bash) (bash, zsh), or\n" +
        "otherix completion fish | source.\n" +
        "\nExamples:\n  otherix completion bash > /etc/bash_completion.d/otherix\n" +
        "  otherix completion zsh > ~/.otherix.zsh   # and in ~/.zshrc: source ~/.otherix.zsh\n" +
        "  otherix completion fish > ~/.config/fish/completions/otherix.fish\n",
    )
    .action((shell: string, _opts, cmd: Command) => {
      if (!(SHELLS as readonly string[]).includes(shell)) {
        cmd.error(`error: unknown shell "${shell}" (expected one of ${SHELLS.join(", ")})`);
      }
      io.out(completionScript(shell as Shell, completionTree(program)));
    });
  registerCompleteHelper(program, io);
}

/**
 * Registers only the hidden `__complete KIND` (`complete_names.ts`; usually served by the
 * start-up fast path without building this program).
 */
export function registerCompleteHelper(program: Command, io: Io): void {
  program.command("__complete", { hidden: true })
    .argument("<kind>")
    .action(async (kind: string, _opts, cmd: Command) => {
      await printNames(kind, globalsOf(cmd), io);
    });
}
