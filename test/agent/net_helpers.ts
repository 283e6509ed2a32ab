/**
 * Network namespaces for tests: create them, run commands inside, and remove them with every
 * process still running in them (dnsmasq daemons), even when a test fails. Names are short
 * (interface and namespace names must fit Linux's limits) and carry a random suffix so
 * parallel runs do not collide.
 *
 * @module
 */

/** Runs `cmd args` (no shell); returns code and output. */
export async function sh(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs `cmd args` and throws with its output unless it exits 0; returns stdout. */
export async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** Runs `cmd args` inside namespace `ns`. */
export function inNs(
  ns: string,
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return sh("ip", ["netns", "exec", ns, cmd, ...args]);
}

/** Like {@link inNs}, throwing unless it exits 0; returns stdout. */
export function mustInNs(ns: string, cmd: string, args: string[]): Promise<string> {
  return must("ip", ["netns", "exec", ns, cmd, ...args]);
}

/** A short random suffix (4 hex digits). */
export function suffix(): string {
  return crypto.randomUUID().slice(0, 4);
}

/** Namespaces created by a test, removed by {@link Namespaces.cleanup}. */
export class Namespaces {
  #names: string[] = [];
  /** Host-side links to delete (e.g. veths and bridges in the root namespace). */
  hostLinks: string[] = [];

  /** Creates namespace `name` with `lo` up. */
  async add(name: string): Promise<string> {
    await must("ip", ["netns", "add", name]);
    this.#names.push(name);
    await mustInNs(name, "ip", ["link", "set", "lo", "up"]);
    return name;
  }

  /**
   * Connects namespaces `a` and `b` (null: the root namespace) with a veth pair named
   * `ifA`/`ifB`, each end given its address (`a.b.c.d/p`) and brought up.
   */
  async veth(
    a: string | null,
    ifA: string,
    addrA: string | null,
    b: string | null,
    ifB: string,
    addrB: string | null,
  ): Promise<void> {
    // Created inside `a` with its peer directly in `b`: no name ever exists in the root
    // namespace unless one side is the root namespace itself.
    const peer = ["peer", "name", ifB, ...(b === null ? ["netns", "1"] : ["netns", b])];
    const add = ["link", "add", ifA, "type", "veth", ...peer];
    if (a === null) await must("ip", add);
    else await mustInNs(a, "ip", add);
    if (a === null || b === null) this.hostLinks.push(a === null ? ifA : ifB);
    for (const [ns, dev, addr] of [[a, ifA, addrA], [b, ifB, addrB]] as const) {
      const run = (args: string[]) => ns === null ? must("ip", args) : mustInNs(ns, "ip", args);
      if (addr) await run(["addr", "add", addr, "dev", dev]);
      await run(["link", "set", dev, "up"]);
    }
  }

  /** Kills every process in the namespaces, deletes them and the host links. */
  async cleanup(): Promise<void> {
    for (const ns of this.#names.reverse()) {
      const pids = (await sh("ip", ["netns", "pids", ns])).stdout.trim().split(/\s+/).filter(
        Boolean,
      );
      for (const pid of pids) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch { /* gone */ }
      }
      await sh("ip", ["netns", "del", ns]);
    }
    for (const l of this.hostLinks) await sh("ip", ["link", "del", l]);
    this.#names = [];
    this.hostLinks = [];
  }
}
