/**
 * A QEMU guest for the test-image tests: one `qemu-system-x86_64` process (TCG only) whose
 * serial console (ttyS0) and QMP monitor are unix sockets this module holds, so a test can read
 * the console, type at it, send QMP commands and wait for QMP events — each wait is for a
 * condition (new console text, a new event, the process exiting), never a fixed sleep.
 *
 * QEMU starts paused (`-S`); both sockets are connected before `cont`, so no console output and
 * no event is missed.
 *
 * @module
 */

/** A QMP event as QEMU sends it (QMP spec: `{"event", "data", "timestamp"}`). */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** Host time the event was received (`performance.now()`, ms). */
  receivedAt: number;
}

/** How to start a guest. */
export interface GuestOptions {
  /** Raw disk image to boot (used read-only through a qcow2 overlay in `dir`). */
  image: string;
  /** QEMU machine type: "q35" (AHCI) or "pc" (IDE). */
  machine: "q35" | "pc";
  /** Directory for the overlay, sockets and serial log (short: socket paths < 108 bytes). */
  dir: string;
  /** A NoCloud seed ISO to attach as an IDE CD-ROM, or none. */
  seedIso?: string;
  /** `-no-reboot`: a guest reboot makes QEMU exit instead of resetting (default false). */
  noReboot?: boolean;
}

const DEFAULT_WAIT_MS = 120_000;

/** Thrown by the waits on timeout or when QEMU exits first; the message has the console tail. */
export class GuestWaitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestWaitError";
  }
}

/** A running guest. Always `close()` it (kills QEMU if it still runs, removes nothing). */
export class QemuGuest {
  readonly #child: Deno.ChildProcess;
  readonly #serial: Deno.UnixConn;
  readonly #qmp: Deno.UnixConn;
  readonly #stderr: Promise<string>;
  #console = "";
  #events: QmpEvent[] = [];
  #replies = new Map<number, (msg: Record<string, unknown>) => void>();
  #nextId = 1;
  #exit: Deno.CommandStatus | null = null;
  #greeted = false;
  /** Woken on every change (console text, event, exit). */
  #changed = Promise.withResolvers<void>();

  /**
   * Resolves with QEMU's exit status and stderr once the process has ended and both sockets
   * reached end of file, i.e. `console` and `events` are complete.
   */
  readonly exited: Promise<{ status: Deno.CommandStatus; stderr: string }>;

  private constructor(child: Deno.ChildProcess, serial: Deno.UnixConn, qmp: Deno.UnixConn) {
    this.#child = child;
    this.#serial = serial;
    this.#qmp = qmp;
    this.#stderr = new Response(child.stderr).text().catch(() => "");
    const readers = Promise.all([this.#readSerial(), this.#readQmp()]);
    this.exited = child.status.then(async (status) => {
      await readers;
      this.#exit = status;
      this.#notify();
      return { status, stderr: await this.#stderr };
    });
  }

  /**
   * Starts QEMU paused, connects the serial console and QMP (capabilities negotiated), then
   * resumes the guest with `cont`.
   *
   * @throws Error when QEMU is not installed, exits early or a socket does not appear in 30 s
   */
  static async start(opts: GuestOptions): Promise<QemuGuest> {
    const overlay = `${opts.dir}/overlay.qcow2`;
    const mk = await new Deno.Command("qemu-img", {
      args: ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", opts.image, overlay, "2G"],
      stdin: "null",
    }).output().catch(notInstalled("qemu-img", "qemu-utils"));
    if (!mk.success) {
      throw new Error(`qemu-img create failed: ${new TextDecoder().decode(mk.stderr)}`);
    }
    const serialSock = `${opts.dir}/serial.sock`;
    const qmpSock = `${opts.dir}/qmp.sock`;
    const drives = ["-drive", `file=${overlay},if=virtio,format=qcow2`];
    if (opts.seedIso) {
      drives.push("-drive", `file=${opts.seedIso},media=cdrom,if=ide,format=raw,readonly=on`);
    }
    const cmd = new Deno.Command("qemu-system-x86_64", {
      args: [
        // TCG only: this host's /dev/kvm hangs stock kernels.
        ...["-machine", `${opts.machine},accel=tcg`, "-cpu", "max", "-m", "256", "-S"],
        ...["-nodefaults", "-no-user-config", "-display", "none"],
        ...(opts.noReboot ? ["-no-reboot"] : []),
        "-chardev",
        `socket,id=serial0,path=${serialSock},server=on,wait=off,logfile=${opts.dir}/serial.log`,
        ...["-serial", "chardev:serial0"],
        ...["-qmp", `unix:${qmpSock},server=on,wait=off`],
        ...drives,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    });
    let child: Deno.ChildProcess;
    try {
      child = cmd.spawn();
    } catch (e) {
      return notInstalled("qemu-system-x86_64", "qemu-system-x86")(e);
    }
    let exited = false;
    child.status.then(() => exited = true);
    let guest: QemuGuest | undefined;
    try {
      const serial = await connectUnix(serialSock, () => exited);
      const qmp = await connectUnix(qmpSock, () => exited).catch((e) => {
        serial.close();
        throw e;
      });
      guest = new QemuGuest(child, serial, qmp);
      await guest.#waitFor(() => guest!.#greeted, 30_000, "the QMP greeting");
      await guest.qmp("qmp_capabilities");
      await guest.qmp("cont");
      return guest;
    } catch (e) {
      let stderr: string;
      if (guest) {
        await guest.close();
        stderr = (await guest.exited).stderr;
      } else {
        if (!exited) child.kill("SIGKILL");
        stderr = await new Response(child.stderr).text().catch(() => "");
      }
      throw new Error(`starting QEMU failed: ${(e as Error).message}\n${stderr}`);
    }
  }

  /** Everything the guest wrote to ttyS0 so far (raw, CR LF line ends). */
  get console(): string {
    return this.#console;
  }

  /** The QMP events received so far, oldest first. */
  get events(): readonly QmpEvent[] {
    return this.#events;
  }

  /** QEMU's exit status, or null while it runs. */
  get exitStatus(): Deno.CommandStatus | null {
    return this.#exit;
  }

  /**
   * Waits until the console, from character offset `from` on, contains `text`; returns the
   * offset just after the match (pass it as `from` to wait for what comes next).
   *
   * @throws GuestWaitError after `timeoutMs` (default 120 s) or when QEMU exits first
   */
  async waitForConsole(text: string, from = 0, timeoutMs = DEFAULT_WAIT_MS): Promise<number> {
    let at = -1;
    await this.#waitFor(
      () => {
        at = this.#console.indexOf(text, from);
        return at >= 0;
      },
      timeoutMs,
      JSON.stringify(text),
    );
    return at + text.length;
  }

  /**
   * Waits for the first QMP event named `name` whose index in `events` is ≥ `from`.
   *
   * @throws GuestWaitError after `timeoutMs` (default 120 s) or when QEMU exits first
   */
  async waitForEvent(name: string, from = 0, timeoutMs = DEFAULT_WAIT_MS): Promise<QmpEvent> {
    let found: QmpEvent | undefined;
    await this.#waitFor(
      () => {
        found = this.#events.slice(from).find((e) => e.event === name);
        return found !== undefined;
      },
      timeoutMs,
      `QMP event ${name}`,
    );
    return found!;
  }

  /**
   * Waits for QEMU to exit (and for its console and events to be read to the end); returns its
   * status.
   *
   * @throws GuestWaitError after `timeoutMs` (default 120 s)
   */
  async waitForExit(timeoutMs = DEFAULT_WAIT_MS): Promise<Deno.CommandStatus> {
    await this.#waitFor(() => this.#exit !== null, timeoutMs, "QEMU to exit", false);
    return this.#exit!;
  }

  /** Types `text` at the serial console (use "\r" for Enter, "\x03" for Ctrl-C). */
  async type(text: string): Promise<void> {
    await writeAll(this.#serial, new TextEncoder().encode(text));
  }

  /**
   * Runs a QMP command and returns its `return` value.
   *
   * @throws Error on an `{"error"}` reply or when QMP closes first
   */
  async qmp(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.#nextId++;
    const reply = new Promise<Record<string, unknown>>((resolve) => this.#replies.set(id, resolve));
    const msg = JSON.stringify(
      args ? { execute: command, arguments: args, id } : {
        execute: command,
        id,
      },
    );
    await writeAll(this.#qmp, new TextEncoder().encode(msg + "\n"));
    const closed = this.exited.then(() => {
      throw new Error(`QMP ${command}: QEMU exited before replying`);
    });
    const r = await Promise.race([reply, closed]);
    if ("error" in r) throw new Error(`QMP ${command}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  /** Kills QEMU (SIGKILL) if it still runs and closes the sockets. */
  async close(): Promise<void> {
    if (this.#exit === null) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await this.exited;
    for (const c of [this.#serial, this.#qmp]) {
      try {
        c.close();
      } catch {
        // already closed
      }
    }
  }

  #notify(): void {
    const old = this.#changed;
    this.#changed = Promise.withResolvers<void>();
    old.resolve();
  }

  async #waitFor(
    cond: () => boolean,
    timeoutMs: number,
    what: string,
    failOnExit = true,
  ): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!cond()) {
      if (failOnExit && this.#exit !== null) {
        throw new GuestWaitError(`QEMU exited before ${what}${this.#tail()}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new GuestWaitError(`timed out waiting for ${what}${this.#tail()}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#changed.promise,
        new Promise((r) => timer = setTimeout(r, left)),
      ]);
      clearTimeout(timer);
    }
  }

  #tail(): string {
    const events = this.#events.map((e) => e.event).join(", ");
    return `\nQMP events: [${events}]\nconsole tail:\n${this.#console.slice(-2000)}`;
  }

  async #readSerial(): Promise<void> {
    const dec = new TextDecoder();
    try {
      for await (const chunk of this.#serial.readable) {
        this.#console += dec.decode(chunk, { stream: true });
        this.#notify();
      }
    } catch {
      // socket closed
    }
  }

  async #readQmp(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.#qmp.readable) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) this.#onQmp(JSON.parse(line));
        }
      }
    } catch {
      // socket closed
    }
  }

  #onQmp(msg: Record<string, unknown>): void {
    if ("QMP" in msg) {
      this.#greeted = true;
    } else if (typeof msg.event === "string") {
      this.#events.push({
        event: msg.event,
        data: msg.data as Record<string, unknown> | undefined,
        receivedAt: performance.now(),
      });
    } else if (typeof msg.id === "number") {
      this.#replies.get(msg.id)?.(msg);
      this.#replies.delete(msg.id);
    }
    this.#notify();
  }
}

/** A `catch` handler: a missing program becomes an error naming its Debian package. */
function notInstalled(program: string, pkg: string): (e: unknown) => never {
  return (e) => {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${program} not found: install ${pkg} (or set OTHERIX_SKIP_VM_TESTS=1)`);
    }
    throw e;
  };
}

/** Connects to a unix socket QEMU is about to create, retrying until it exists (30 s). */
async function connectUnix(path: string, exited: () => boolean): Promise<Deno.UnixConn> {
  const deadline = performance.now() + 30_000;
  for (;;) {
    try {
      return await Deno.connect({ transport: "unix", path });
    } catch (e) {
      const retry = e instanceof Deno.errors.NotFound ||
        e instanceof Deno.errors.ConnectionRefused;
      if (!retry) throw e;
      if (exited()) throw new Error(`QEMU exited before creating ${path}`);
      if (performance.now() > deadline) throw new Error(`${path} did not appear in 30 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}
