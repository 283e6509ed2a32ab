import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../assert.ts";
import { ApiError } from "../../shared/errors.ts";
import {
  buildQemuArgs,
  checkSocketPath,
  qemuEscape,
  type QemuProcess,
  RingBuffer,
  startQemu,
  stopQemu,
  vmFilePaths,
} from "../../agent/qemu.ts";
import type { QmpClient } from "../../agent/qmp.ts";

const ID = "0b5c8a3e-6f5e-4d0e-9a59-0c0e7f1d2a11";

Deno.test("qemu: argv for an amd64 guest under TCG", () => {
  const files = vmFilePaths("/var/lib/otherix/vms", "/run/otherix/vms", ID);
  const args = buildQemuArgs({
    name: "demo-vm",
    architecture: "amd64",
    accelerator: "tcg",
    vcpus: 2,
    memoryMb: 2048,
    files,
  });
  assertEquals(args, [
    "-name",
    "guest=demo-vm",
    "-machine",
    "q35,accel=tcg",
    "-cpu",
    "max",
    "-smp",
    "2",
    "-m",
    "2048",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-vga",
    "none",
    "-drive",
    `file=/var/lib/otherix/vms/${ID}/disk.qcow2,if=virtio,format=qcow2`,
    "-drive",
    `file=/var/lib/otherix/vms/${ID}/seed.iso,media=cdrom,if=ide,format=raw,readonly=on`,
    "-chardev",
    `socket,id=serial0,path=/run/otherix/vms/${ID}/serial.sock,server=on,wait=off,logfile=/var/lib/otherix/vms/${ID}/serial.log,logappend=on`,
    "-serial",
    "chardev:serial0",
    "-qmp",
    `unix:/run/otherix/vms/${ID}/qmp.sock,server=on,wait=off`,
    "-nic",
    "user,model=virtio-net-pci",
  ]);
});

Deno.test("qemu: argv variants (kvm, arm64, commas, extra args)", () => {
  const files = vmFilePaths("/st,ate/vms", "/run/vms", ID);
  const kvm = buildQemuArgs({
    name: "a",
    architecture: "amd64",
    accelerator: "kvm",
    vcpus: 1,
    memoryMb: 512,
    files,
    extraArgs: ["-S"],
  });
  assertEquals(kvm.slice(2, 6), ["-machine", "q35,accel=kvm", "-cpu", "host"]);
  assert(kvm.includes(`file=/st,,ate/vms/${ID}/disk.qcow2,if=virtio,format=qcow2`));
  assertEquals(kvm[kvm.length - 1], "-S");
  const arm = buildQemuArgs({
    name: "a",
    architecture: "arm64",
    accelerator: "tcg",
    vcpus: 1,
    memoryMb: 512,
    files,
    firmwareArm64: "/fw/QEMU_EFI.fd",
  });
  assertEquals(arm.slice(2, 6), ["-machine", "virt,gic-version=max,accel=tcg", "-cpu", "max"]);
  assert(arm.join(" ").includes("-bios /fw/QEMU_EFI.fd"));
  assert(arm.includes(`file=/st,,ate/vms/${ID}/seed.iso,if=virtio,format=raw,readonly=on`));
  assertEquals(qemuEscape("a,b,,c"), "a,,b,,,,c");
});

Deno.test("qemu: socket paths longer than sun_path are refused", () => {
  checkSocketPath("/run/otherix/vms/" + ID + "/qmp.sock");
  const e = assertThrows(() => checkSocketPath("/" + "x".repeat(120) + "/qmp.sock"));
  assertEquals((e as ApiError).code, "vm_create_failed");
  assertStringIncludes(e.message, "unix socket path too long");
});

Deno.test("qemu: ring buffer keeps the tail", () => {
  const r = new RingBuffer(8);
  const enc = new TextEncoder();
  r.push(enc.encode("hello "));
  r.push(enc.encode("world"));
  assertEquals(r.text(), "lo world");
  r.push(enc.encode("0123456789"));
  assertEquals(r.text(), "23456789");
  r.push(enc.encode("ab"));
  assertEquals(r.text(), "456789ab");
});

async function tinyVmFiles() {
  const dir = await Deno.makeTempDir({ prefix: "otherix-qemu-" });
  const files = vmFilePaths(`${dir}/vms`, `${dir}/run`, ID);
  await Deno.mkdir(files.vmDir, { recursive: true });
  await Deno.mkdir(files.sockDir, { recursive: true });
  const run = (args: string[]) => new Deno.Command("qemu-img", { args, stdout: "null" }).output();
  await run(["create", "-f", "qcow2", files.disk, "16M"]);
  await run(["create", "-f", "raw", files.seed, "1M"]);
  return { dir, files };
}

Deno.test("qemu: an invalid option → qemu_spawn_failed carrying QEMU's stderr", async () => {
  const { dir, files } = await tinyVmFiles();
  try {
    const args = buildQemuArgs({
      name: "bad",
      architecture: "amd64",
      accelerator: "tcg",
      vcpus: 1,
      memoryMb: 128,
      files,
      extraArgs: ["-otherix-bogus-option"],
    });
    const err = await assertRejects(() =>
      startQemu({
        binary: "qemu-system-x86_64",
        args,
        qmpSock: files.qmpSock,
        startTimeoutMs: 10_000,
      })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "qemu_spawn_failed");
    assertStringIncludes(err.message, "exited during startup (exit code 1)");
    assertStringIncludes(err.message, "-otherix-bogus-option: invalid option");

    const missing = await assertRejects(() =>
      startQemu({
        binary: "qemu-system-otherix-none",
        args,
        qmpSock: files.qmpSock,
        startTimeoutMs: 1000,
      })
    );
    assertEquals((missing as ApiError).code, "qemu_spawn_failed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qemu: start under TCG reaches running over QMP, quit stops it", async () => {
  const { dir, files } = await tinyVmFiles();
  try {
    const args = buildQemuArgs({
      name: "tiny",
      architecture: "amd64",
      accelerator: "tcg",
      vcpus: 1,
      memoryMb: 128,
      files,
    });
    const t0 = performance.now();
    const proc = await startQemu({
      binary: "qemu-system-x86_64",
      args,
      qmpSock: files.qmpSock,
      startTimeoutMs: 30_000,
    });
    const ms = Math.round(performance.now() - t0);
    console.log(`QEMU (TCG) reached running in ${ms} ms`);
    assert(proc.alive());
    assert(await Deno.stat(`/proc/${proc.pid}`).then(() => true, () => false));
    assertEquals(await proc.qmp!.execute("query-status"), {
      status: "running",
      singlestep: false,
      running: true,
    });
    const status = await stopQemu(proc, 10_000);
    assertEquals(status.code, 0);
    assert(!proc.alive());
    assertEquals(await Deno.stat(`/proc/${proc.pid}`).then(() => true, () => false), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qemu: stop SIGKILLs a QEMU whose QMP hangs once one grace window has passed", async () => {
  // A QEMU that never answers `quit` and only exits when killed.
  let killed = 0;
  let exit!: (s: Deno.CommandStatus) => void;
  const status = new Promise<Deno.CommandStatus>((r) => (exit = r));
  const hungQmp = { execute: () => new Promise(() => {}), close() {} } as unknown as QmpClient;
  const proc: QemuProcess = {
    pid: 1,
    status,
    stderrTail: () => "",
    alive: () => killed === 0,
    qmp: hungQmp,
    kill() {
      killed++;
      exit({ success: false, code: 137, signal: "SIGKILL" });
    },
  };
  const graceMs = 600;
  const t0 = performance.now();
  const s = await stopQemu(proc, graceMs);
  const ms = performance.now() - t0;
  assertEquals([s.signal, killed], ["SIGKILL", 1]);
  assert(ms >= graceMs - 20, `killed after ${ms} ms, before the grace window`);
  assert(ms < 1.5 * graceMs, `killed after ${ms} ms: more than one grace window of ${graceMs} ms`);
});
