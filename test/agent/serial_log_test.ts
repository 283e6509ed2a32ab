import { assert, assertEquals } from "../assert.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { trimSerialLog } from "../../agent/serial_log.ts";
import { VmManager } from "../../agent/vms.ts";
import { memoryLogger, tempRoot } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Numbered lines `line 000001 …\r\n` (like a serial console) of `count` lines. */
function lines(from: number, count: number): string {
  let s = "";
  for (let i = from; i < from + count; i++) {
    s += `line ${String(i).padStart(6, "0")} ${"x".repeat(40)}\r\n`;
  }
  return s;
}

Deno.test("serial log: trimming keeps the newest half, starting at a whole line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-serial-" });
  try {
    const path = `${dir}/serial.log`;
    const max = 64 * 1024;
    // 3000 lines of 55 bytes: 165 000 bytes, well over the cap.
    const text = lines(1, 3000);
    await Deno.writeTextFile(path, text);
    const t = await trimSerialLog(path, max);
    assert(t !== null);
    assertEquals(t.beforeBytes, text.length);
    const after = await Deno.readTextFile(path);
    assertEquals(after.length, t.afterBytes);
    assert(after.length <= max / 2, `${after.length} bytes kept, cap/2 is ${max / 2}`);
    assert(after.length > max / 2 - 4096, `kept only ${after.length} bytes`);
    // The newest bytes are kept verbatim, the oldest are gone, and it starts at a line.
    assert(text.endsWith(after));
    assert(after.startsWith("line "), after.slice(0, 20));
    assert(after.endsWith(lines(3000, 1)));
    assert(!after.includes("line 000001 "));
    // Within the cap now: a second pass leaves it alone.
    assertEquals(await trimSerialLog(path, max), null);
    assertEquals(await Deno.readTextFile(path), after);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serial log: an O_APPEND writer (QEMU's logappend=on) continues at the new end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-serial-" });
  try {
    const path = `${dir}/serial.log`;
    const writer = await Deno.open(path, { append: true, create: true });
    try {
      await writer.write(enc.encode(lines(1, 2000)));
      const t = await trimSerialLog(path, 64 * 1024);
      assert(t !== null && t.afterBytes <= 32 * 1024);
      await writer.write(enc.encode(lines(2001, 1)));
      const after = await Deno.readFile(path);
      assertEquals(after.length, t.afterBytes + lines(2001, 1).length);
      assert(!after.includes(0), "no hole of NUL bytes");
      assert(dec.decode(after).endsWith(lines(2000, 2)));
    } finally {
      writer.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serial log: missing, small and non-regular files are left alone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-serial-" });
  try {
    assertEquals(await trimSerialLog(`${dir}/missing.log`, 65536), null);
    await Deno.writeTextFile(`${dir}/small.log`, "hello\n");
    assertEquals(await trimSerialLog(`${dir}/small.log`, 65536), null);
    assertEquals(await Deno.readTextFile(`${dir}/small.log`), "hello\n");
    // A symlink to a large file is not followed.
    await Deno.writeTextFile(`${dir}/big`, lines(1, 3000));
    await Deno.symlink(`${dir}/big`, `${dir}/link.log`);
    assertEquals(await trimSerialLog(`${dir}/link.log`, 65536), null);
    assertEquals(await Deno.readTextFile(`${dir}/big`), lines(1, 3000));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Sets or clears the immutable attribute (writes then fail with EPERM, even for root). */
async function chattr(flag: "+i" | "-i", path: string): Promise<boolean> {
  try {
    return (await new Deno.Command("chattr", { args: [flag, path], stderr: "null" }).output())
      .success;
  } catch {
    return false;
  }
}

Deno.test("serial log: the VM manager trims every known VM and only warns on I/O errors", async () => {
  const t = await tempRoot("qemu:\n  serial_log_max_bytes: 65536\n");
  const paths = agentPaths(t.cfg);
  const { log, lines: logLines } = memoryLogger();
  const vms = new VmManager({
    paths,
    qemu: t.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 1000 }),
    log,
  });
  // Two prepared (stopped) VMs, registered by recover().
  const ids = [crypto.randomUUID(), crypto.randomUUID()];
  const files = ids.map((id) => vms.files(id));
  for (const [i, f] of files.entries()) {
    await Deno.mkdir(f.vmDir, { recursive: true });
    for (const p of [f.disk, f.seed]) await Deno.writeTextFile(p, "");
    await Deno.writeTextFile(
      f.vmJson,
      JSON.stringify({ id: ids[i], name: `vm-${i}`, image: "x.img", accelerator: "tcg" }),
    );
    await Deno.writeTextFile(f.serialLog, lines(1, 3000));
  }
  let immutable = false;
  try {
    await vms.recover();
    assertEquals(vms.list().length, 2);
    immutable = await chattr("+i", files[0].serialLog);
    assertEquals(await vms.trimSerialLogs(), immutable ? 1 : 2);
    assert((await Deno.stat(files[1].serialLog)).size <= 32 * 1024);
    if (immutable) {
      assert(logLines.some((l) => l.includes("cannot trim serial log")), logLines.join("\n"));
    } else console.log("chattr +i unavailable: I/O error path not exercised");

    // The periodic loop trims a log that grows again, and stops on shutdown.
    await Deno.writeTextFile(files[1].serialLog, lines(1, 3000));
    const trimmer = vms.startSerialLogTrimmer(50);
    const deadline = Date.now() + 5000;
    while ((await Deno.stat(files[1].serialLog)).size > 65536 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert((await Deno.stat(files[1].serialLog)).size <= 32 * 1024);
    await vms.close();
    await trimmer.stop(); // idempotent after shutdown
    await Deno.writeTextFile(files[1].serialLog, lines(1, 3000));
    await new Promise((r) => setTimeout(r, 200));
    assertEquals((await Deno.stat(files[1].serialLog)).size, lines(1, 3000).length);
  } finally {
    if (immutable) await chattr("-i", files[0].serialLog);
    await vms.close();
    await t.cleanup();
  }
});
