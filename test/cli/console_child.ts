/**
 * Child process of test/cli/console_test.ts: runs {@link runConsole} against `<endpoint>` for
 * VM `<name>` with the real stdin/stdout/stderr and signals, and reports on stderr (lines
 * starting `CHILD `) its pid, its terminal and the terminal's `stty -g` before and after the
 * session. Exits like the CLI: 0, or 1 after printing the error line.
 *
 * Usage: deno run -A test/cli/console_child.ts <endpoint> <name>
 */
import { runConsole } from "../../cli/console.ts";
import { CliError } from "../../cli/errors.ts";

const [endpoint, name] = Deno.args;
const pty = Deno.stdin.isTerminal() ? Deno.readLinkSync("/proc/self/fd/0") : "-";

/** `stty -g` of the child's terminal ("-" without one). */
async function stty(): Promise<string> {
  if (pty === "-") return "-";
  const out = await new Deno.Command("stty", { args: ["-g", "-F", pty], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

console.error(`CHILD pid=${Deno.pid} pty=${pty} before=${await stty()}`);
let code = 0;
try {
  const outcome = await runConsole({ endpoint, token: "test-token", name, timeoutMs: 10_000 });
  console.error(`CHILD outcome=${outcome}`);
} catch (e) {
  code = 1;
  console.error(e instanceof CliError ? e.render() : `error: ${e}`);
}
console.error(`CHILD after=${await stty()}`);
Deno.exit(code);
