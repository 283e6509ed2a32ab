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
import { z } from "zod";
import { connect, globalsOf } from "../common.ts";
import { completionScript, type Shell, SHELLS } from "../completion/scripts.ts";
import { completionTree, RESOURCE_KINDS, type ResourceKind } from "../completion/tree.ts";
import type { Io } from "../io.ts";

/** Longest a `__complete` lookup may take, seconds. */
export const COMPLETE_TIMEOUT_SECONDS = 2;

const PATHS: Record<ResourceKind, string> = {
  vm: "/v1/vms",
  node: "/v1/nodes",
  pool: "/v1/pools",
  network: "/v1/networks",
};

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

/** Registers only the hidden `__complete KIND` (the fast path the scripts call). */
export function registerCompleteHelper(program: Command, io: Io): void {
  program.command("__complete", { hidden: true })
    .argument("<kind>")
    .action(async (kind: string, _opts, cmd: Command) => {
      if (!(RESOURCE_KINDS as readonly string[]).includes(kind)) return;
      try {
        const seconds = Math.min(globalsOf(cmd).requestTimeout, COMPLETE_TIMEOUT_SECONDS);
        program.setOptionValue("requestTimeout", seconds);
        const client = await connect(cmd, io);
        const { items } = await client.listAll(
          PATHS[kind as ResourceKind],
          z.object({ name: z.string() }),
        );
        const names = [...new Set(items.map((i) => i.name))].sort();
        if (names.length) io.out(names.join("\n") + "\n");
      } catch {
        // Silent by design: completion must never print errors into the command line.
      }
    });
}
