/**
 * Run by sandbox_test.ts under the agent's permission flags: tries each operation and prints
 * one JSON object `{name: "ok" | "<ErrorName>: message"}` on stdout.
 *
 * Args: <state root> <config root> <outside file>
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { describeDecision, detectAccelerator, realHostProbe } from "../../agent/accel.ts";
import { filesystemSpace } from "../../agent/images.ts";
import { trimSerialLog } from "../../agent/serial_log.ts";
import { SystemInfo } from "../../agent/sysinfo.ts";
import { createLogger } from "../../shared/log.ts";
import { killQemu, launchQemu, lockedPid } from "../../agent/qemu.ts";

const [stateRoot, configRoot, outsideFile] = Deno.args;
const results: Record<string, string> = {};

async function probe(name: string, fn: () => unknown) {
  try {
    await fn();
    results[name] = "ok";
  } catch (e) {
    results[name] = `${(e as Error).name}: ${(e as Error).message}`;
  }
}

await probe("read /etc/passwd", () => Deno.readTextFile("/etc/passwd"));
await probe("read outside file", () => Deno.readTextFile(outsideFile));
await probe("spawn /bin/sh", () => new Deno.Command("/bin/sh", { args: ["-c", "true"] }).output());
await probe("spawn sh", () => new Deno.Command("sh", { args: ["-c", "true"] }).output());
await probe("env HOME", () => {
  if (Deno.env.get("HOME") === undefined) throw new Error("HOME unreadable");
});
await probe("env OTHERIX_PROBE", () => {
  if (Deno.env.get("OTHERIX_PROBE") !== "yes") throw new Error("OTHERIX_PROBE missing");
});
await probe("write+read state", async () => {
  await Deno.mkdir(`${stateRoot}/probe`, { recursive: true });
  await Deno.writeTextFile(`${stateRoot}/probe/f`, "hi");
  if (await Deno.readTextFile(`${stateRoot}/probe/f`) !== "hi") throw new Error("mismatch");
});
await probe("write config", () => Deno.writeTextFile(`${configRoot}/x`, "no"));
await probe("read config", () => Deno.readDir(configRoot)[Symbol.asyncIterator]().next());
await probe("spawn qemu-img --version", async () => {
  const out = await new Deno.Command("qemu-img", { args: ["--version"], stdout: "piped" }).output();
  if (!out.success || !new TextDecoder().decode(out.stdout).includes("qemu-img version")) {
    throw new Error("qemu-img failed");
  }
});
await probe("Deno.kill", () => Deno.kill(999999, "SIGTERM"));
await probe("spawn kill", () => new Deno.Command("kill", { args: ["-0", "1"] }).output());
await probe("daemonized qemu: launch, find by pidfile, pkill", async () => {
  const dir = `${stateRoot}/probe-qemu`;
  await Deno.mkdir(dir, { recursive: true });
  const pidFile = `${dir}/qemu.pid`;
  const qmpSock = `${dir}/qmp.sock`;
  const q = await launchQemu({
    binary: "qemu-system-x86_64",
    args: [
      ...["-machine", "q35,accel=tcg", "-m", "64", "-nodefaults", "-display", "none", "-S"],
      ...["-qmp", `unix:${qmpSock},server=on,wait=off`, "-daemonize", "-pidfile", pidFile],
    ],
    pidFile,
    qmpSock,
    startTimeoutMs: 30_000,
  });
  q.qmp.close();
  if ((await lockedPid(pidFile)) !== q.pid) throw new Error("pgrep did not find QEMU");
  if (!(await killQemu(pidFile))) throw new Error("pkill did not signal QEMU");
  const end = Date.now() + 10_000;
  while ((await lockedPid(pidFile)) !== null) {
    if (Date.now() > end) throw new Error("QEMU survived pkill");
    await new Promise((r) => setTimeout(r, 20));
  }
  results["daemonized qemu pid"] = String(q.pid);
});
await probe("sys figures", () => {
  Deno.hostname();
  Deno.loadavg();
  Deno.systemMemoryInfo();
});
await probe("statfs state", () => statfsSync(stateRoot));
results["system disk"] = JSON.stringify(
  await new SystemInfo(stateRoot, createLogger("probe", "error")).systemDisk(),
);
await probe("statfs /", () => statfsSync("/"));
await probe("pool free space", async () => {
  await Deno.mkdir(`${stateRoot}/pools/default/images`, { recursive: true });
  const space = await filesystemSpace(`${stateRoot}/pools/default/images`);
  if (!(space.availableBytes > 0 && space.totalBytes >= space.availableBytes)) {
    throw new Error(`implausible ${JSON.stringify(space)}`);
  }
});
await probe("trim serial log", async () => {
  const log = `${stateRoot}/probe/serial.log`;
  await Deno.mkdir(`${stateRoot}/probe`, { recursive: true });
  await Deno.writeFile(log, new Uint8Array(200_000).fill(0x41));
  const t = await trimSerialLog(log, 65536);
  if (t?.afterBytes !== 32768 || (await Deno.stat(log)).size !== 32768) {
    throw new Error("not trimmed");
  }
});
await probe("stat /sys/module", () => Deno.stat("/sys/module"));
await probe("open /dev/kvm rw", async () => {
  try {
    (await Deno.open("/dev/kvm", { read: true, write: true })).close();
  } catch (e) {
    // Permission to try is what matters; a missing device is fine.
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
});

await probe("accelerator detection", async () => {
  const d = await detectAccelerator(
    "auto",
    realHostProbe({ qemuBinary: "qemu-system-x86_64", qemuImg: "qemu-img" }),
  );
  results["accelerator"] = describeDecision(d);
});

console.log(JSON.stringify(results));
