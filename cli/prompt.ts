/**
 * Interactive input from the terminal: plain lines (echoed by the terminal), masked secrets
 * (raw mode, nothing echoed) and y/N confirmations. Prompts go to stderr so stdout stays
 * parseable.
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Result of feeding bytes to a {@link SecretLineEditor}. */
export type EditorState = "more" | "done" | "abort";

/**
 * Line editing for a masked secret typed in raw mode: Enter finishes, Backspace/DEL removes
 * the last character (a whole UTF-8 sequence), Ctrl-U clears, Ctrl-C aborts, Ctrl-D aborts on
 * an empty line and finishes otherwise; other control bytes are ignored.
 */
export class SecretLineEditor {
  #bytes: number[] = [];
  #state: EditorState = "more";
  /** Bytes received after the terminating key (belong to the next read). */
  rest: Uint8Array = new Uint8Array();

  /** Feeds input bytes; returns the state after consuming them. */
  feed(chunk: Uint8Array): EditorState {
    for (let i = 0; i < chunk.length && this.#state === "more"; i++) {
      const b = chunk[i];
      if (b === 0x0d || b === 0x0a) {
        this.#state = "done";
        // A CRLF pair counts as one Enter.
        const next = b === 0x0d && chunk[i + 1] === 0x0a ? i + 2 : i + 1;
        this.rest = chunk.slice(next);
      } else if (b === 0x03) {
        this.#state = "abort";
      } else if (b === 0x04) {
        this.#state = this.#bytes.length === 0 ? "abort" : "done";
        this.rest = chunk.slice(i + 1);
      } else if (b === 0x7f || b === 0x08) {
        while (this.#bytes.length && (this.#bytes[this.#bytes.length - 1] & 0xc0) === 0x80) {
          this.#bytes.pop();
        }
        this.#bytes.pop();
      } else if (b === 0x15) {
        this.#bytes = [];
      } else if (b >= 0x20 || b === 0x09) {
        this.#bytes.push(b);
      }
    }
    return this.#state;
  }

  /** The text typed so far. */
  value(): string {
    return decoder.decode(new Uint8Array(this.#bytes));
  }
}

/** Buffered line reader over a byte source (stdin), shared by all prompts of a process. */
export class LineReader {
  #pending = new Uint8Array();
  #eof = false;

  constructor(private readonly source: { read(buf: Uint8Array): Promise<number | null> }) {}

  /** Returns bytes already read past the last line back to the buffer's front. */
  unshift(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const merged = new Uint8Array(bytes.length + this.#pending.length);
    merged.set(bytes);
    merged.set(this.#pending, bytes.length);
    this.#pending = merged;
  }

  /** Takes whatever is buffered (used before switching to raw reads). */
  takePending(): Uint8Array {
    const p = this.#pending;
    this.#pending = new Uint8Array();
    return p;
  }

  /** Reads raw bytes from the source (buffered bytes first); `null` at end of input. */
  async readChunk(): Promise<Uint8Array | null> {
    if (this.#pending.length) return this.takePending();
    if (this.#eof) return null;
    const buf = new Uint8Array(1024);
    const n = await this.source.read(buf);
    if (n === null) {
      this.#eof = true;
      return null;
    }
    return buf.subarray(0, n);
  }

  /** Reads one line without its terminator; `null` at end of input with nothing read. */
  async readLine(): Promise<string | null> {
    for (;;) {
      const nl = this.#pending.indexOf(0x0a);
      if (nl >= 0) {
        const line = this.#pending.subarray(0, nl);
        this.#pending = this.#pending.slice(nl + 1);
        return decoder.decode(line).replace(/\r$/, "");
      }
      if (this.#eof) {
        if (this.#pending.length === 0) return null;
        return decoder.decode(this.takePending()).replace(/\r$/, "");
      }
      const buf = new Uint8Array(1024);
      const n = await this.source.read(buf);
      if (n === null) this.#eof = true;
      else this.#append(buf.subarray(0, n));
    }
  }

  #append(bytes: Uint8Array): void {
    const merged = new Uint8Array(this.#pending.length + bytes.length);
    merged.set(this.#pending);
    merged.set(bytes, this.#pending.length);
    this.#pending = merged;
  }
}

/** Something that reads interactive answers; {@link terminalPrompter} is the real one. */
export interface Prompter {
  /** Shows `question` and reads one echoed line; `null` at end of input. */
  line(question: string): Promise<string | null>;
  /** Shows `question` and reads a masked line (no echo); `null` when aborted or at EOF. */
  secret(question: string): Promise<string | null>;
}

/** Writes all of `text` (UTF-8) to `w` (`writeSync` may take fewer bytes than offered). */
export function writeAllSync(w: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length) bytes = bytes.subarray(w.writeSync(bytes));
}

/** The process terminal: reads `Deno.stdin`, writes prompts to `Deno.stderr`. */
export function terminalPrompter(): Prompter {
  const reader = new LineReader(Deno.stdin);
  return {
    line(question) {
      writeAllSync(Deno.stderr, question);
      return reader.readLine();
    },
    async secret(question) {
      writeAllSync(Deno.stderr, question);
      const editor = new SecretLineEditor();
      Deno.stdin.setRaw(true);
      let state: EditorState = "more";
      try {
        while (state === "more") {
          const chunk = await reader.readChunk();
          if (chunk === null) {
            state = editor.value() === "" ? "abort" : "done";
            break;
          }
          state = editor.feed(chunk);
        }
      } finally {
        Deno.stdin.setRaw(false);
        writeAllSync(Deno.stderr, "\n");
      }
      reader.unshift(editor.rest);
      return state === "done" ? editor.value() : null;
    },
  };
}

/** Asks a y/N question; only `y`/`yes` (any case) confirm. */
export async function confirm(prompter: Prompter, question: string): Promise<boolean> {
  const answer = await prompter.line(`${question} [y/N]: `);
  return answer !== null && /^\s*y(es)?\s*$/i.test(answer);
}
