/**
 * The process surroundings a command uses — environment, streams, terminal detection, clock,
 * network — behind one interface, so commands run unchanged against the real process
 * ({@link denoIo}) or an in-memory fake in tests.
 *
 * @module
 */
import { type Prompter, terminalPrompter, writeAllSync } from "./prompt.ts";

/** Everything a command may touch outside its arguments. */
export interface Io {
  /** Reads an environment variable; empty values count as unset. */
  env(name: string): string | undefined;
  /** Writes to stdout (no newline added). */
  out(text: string): void;
  /** Writes to stderr (no newline added). */
  err(text: string): void;
  /** True when stdin is an interactive terminal (prompts are allowed). */
  stdinIsTerminal(): boolean;
  /** True when stderr is an interactive terminal (progress dots instead of lines). */
  stderrIsTerminal(): boolean;
  /** Interactive prompts (only used when {@link stdinIsTerminal}). */
  prompter: Prompter;
  /** The machine's hostname (names minted API tokens). */
  hostname(): string;
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms` milliseconds. */
  sleep(ms: number): Promise<void>;
  /** `fetch` used for every API call. */
  fetch: typeof fetch;
  /** Reads a text file (`--user-data @file`). */
  readTextFile(path: string): Promise<string>;
  /**
   * Calls `handler` on SIGINT (Ctrl+C) instead of the default (the process dies) until the
   * returned function removes it (`--watch` ends cleanly with exit status 0).
   */
  onInterrupt(handler: () => void): () => void;
}

/** The real process: `Deno.env`, `Deno.stdout`/`Deno.stderr`, the terminal, `fetch`. */
export function denoIo(): Io {
  let prompter: Prompter | undefined;
  return {
    env: (name) => {
      const v = Deno.env.get(name);
      return v === "" ? undefined : v;
    },
    out: (text) => writeAllSync(Deno.stdout, text),
    err: (text) => writeAllSync(Deno.stderr, text),
    stdinIsTerminal: () => Deno.stdin.isTerminal(),
    stderrIsTerminal: () => Deno.stderr.isTerminal(),
    get prompter() {
      return prompter ??= terminalPrompter();
    },
    hostname: () => {
      try {
        return Deno.hostname();
      } catch {
        return "unknown-host";
      }
    },
    now: () => Date.now(),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    fetch: (input, init) => fetch(input, init),
    readTextFile: (path) => Deno.readTextFile(path),
    onInterrupt: (handler) => {
      Deno.addSignalListener("SIGINT", handler);
      return () => Deno.removeSignalListener("SIGINT", handler);
    },
  };
}
