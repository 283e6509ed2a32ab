import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../assert.ts";
import { ApiError } from "../../shared/errors.ts";
import {
  adoptQemu,
  buildQemuArgs,
  checkSocketPath,
  killOrphan,
  killQemu,
  launchQemu,
  lockedPid,
  qemuEscape,
  RingBuffer,
  stopQemu,
  vmFilePaths,
} from "../../agent/qemu.ts";
import { exists } from "../../agent/fsutil.ts";
import { parentPid, pidAlive, waitGone, waitUntil } from "./helpers.ts";

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
    "-chardev",
    `socket,id=qga0,path=/run/otherix/vms/${ID}/qga.sock,server=on,wait=off`,
    "-device",
    "virtio-serial-pci,id=vser0",
    "-device",
    "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
    "-nic",
    "user,model=virtio-net-pci",
    "-no-shutdown",
    "-daemonize",
    "-pidfile",
    `/run/otherix/vms/${ID}/qemu.pid`,
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
    paused: true,
    extraArgs: ["-otherix-extra"],
  });
  assertEquals(kvm.slice(2, 6), ["-machine", "q35,accel=kvm", "-cpu", "host"]);
  assert(kvm.includes(`file=/st,,ate/vms/${ID}/disk.qcow2,if=virtio,format=qcow2`));
  assertEquals(kvm.slice(-3), ["/run/vms/" + ID + "/qemu.pid", "-S", "-otherix-extra"]);
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
  const args = (extraArgs: string[] = []) =>
    buildQemuArgs({
      name: "tiny",
      architecture: "amd64",
      accelerator: "tcg",
      vcpus: 1,
      memoryMb: 128,
      files,
      extraArgs,
    });
  const launch = (extraArgs: string[] = []) =>
    launchQemu({
      binary: "qemu-system-x86_64",
      args: args(extraArgs),
      pidFile: files.pidFile,
      qmpSock: files.qmpSock,
      startTimeoutMs: 30_000,
    });
  return {
    dir,
    files,
    args,
    launch,
    async cleanup() {
      await new Deno.Command("pkill", { args: ["-KILL", "-F", files.pidFile, "-L"] }).output();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("qemu: an invalid option → qemu_spawn_failed carrying QEMU's stderr", async () => {
  const vm = await tinyVmFiles();
  try {
    const err = await assertRejects(() => vm.launch(["-otherix-bogus-option"]));
    assert(err instanceof ApiError);
    assertEquals(err.code, "qemu_spawn_failed");
    assertStringIncludes(err.message, "exited during startup (exit code 1)");
    assertStringIncludes(err.message, "-otherix-bogus-option: invalid option");
    assertEquals(await lockedPid(vm.files.pidFile), null);

    const missing = await assertRejects(() =>
      launchQemu({
        binary: "qemu-system-otherix-none",
        args: vm.args(),
        pidFile: vm.files.pidFile,
        qmpSock: vm.files.qmpSock,
        startTimeoutMs: 1000,
      })
    );
    assertEquals((missing as ApiError).code, "qemu_spawn_failed");
  } finally {
    await vm.cleanup();
  }
});

Deno.test("qemu: a daemonized QEMU outlives its session and is found again by its pidfile", async (t) => {
  const vm = await tinyVmFiles();
  try {
    const t0 = performance.now();
    const q = await vm.launch();
    console.log(
      `QEMU (TCG) launched and answering QMP in ${Math.round(performance.now() - t0)} ms`,
    );

    await t.step("launched: running, reparented to PID 1, holding its pidfile", async () => {
      assertEquals(q.status, "running");
      assertEquals(await parentPid(q.pid), 1);
      assertEquals(await lockedPid(vm.files.pidFile), q.pid);
      assertEquals(Number((await Deno.readTextFile(vm.files.pidFile)).trim()), q.pid);
    });

    await t.step("closing the session leaves QEMU running; adoption reconnects", async () => {
      q.qmp.close();
      await q.qmp.closed;
      assert(q.qmp.closedLocally);
      assert(await pidAlive(q.pid));
      const again = await adoptQemu(vm.files.pidFile, vm.files.qmpSock, Date.now() + 5000);
      assertEquals([again?.pid, again?.status], [q.pid, "running"]);
      const events: string[] = [];
      again!.qmp.onEvent((e) => events.push(e.event));
      await again!.qmp.execute("stop");
      assertEquals(await again!.qmp.execute("query-status"), {
        status: "paused",
        singlestep: false,
        running: false,
      });
      await waitUntil(() => events.includes("STOP"), 5000, "the STOP event");

      // quit: QEMU exits by itself, removes its pidfile, and the session ends remotely.
      assertEquals(await stopQemu(again!, 10_000), "quit");
      assertEquals(again!.qmp.closedLocally, false);
      await waitGone(q.pid);
      assertEquals(await exists(vm.files.pidFile), false);
    });

    await t.step("a QEMU killed with SIGKILL leaves a stale pidfile nobody adopts", async () => {
      const k = await vm.launch();
      k.qmp.close();
      Deno.kill(k.pid, "SIGKILL");
      await waitGone(k.pid);
      assert(await exists(vm.files.pidFile), "a killed QEMU cannot remove its pidfile");
      assertEquals(await lockedPid(vm.files.pidFile), null);
      assertEquals(await adoptQemu(vm.files.pidFile, vm.files.qmpSock, Date.now() + 1000), null);
    });
  } finally {
    await vm.cleanup();
  }
});

Deno.test("qemu: pkill through the pidfile never reaches a process named by a stale pidfile", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otherix-qemu-" });
  // A live process whose pid is written in a pidfile that nobody locks (a recycled pid).
  const bystander = new Deno.Command("sleep", { args: ["60"] }).spawn();
  try {
    await Deno.writeTextFile(`${dir}/qemu.pid`, `${bystander.pid}\n`);
    assertEquals(await lockedPid(`${dir}/qemu.pid`), null);
    assertEquals(await killQemu(`${dir}/qemu.pid`), false);
    assertEquals(await killOrphan(`${dir}/qemu.pid`), null);
    assert(await pidAlive(bystander.pid));
    assertEquals(await killQemu(`${dir}/missing.pid`), false);
  } finally {
    bystander.kill("SIGKILL");
    await bystander.status;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qemu: stop SIGKILLs a hung QEMU once one grace window has passed", async () => {
  const vm = await tinyVmFiles();
  try {
    const q = await vm.launch();
    // SIGSTOP: the process lives but answers nothing, not even `quit`.
    Deno.kill(q.pid, "SIGSTOP");
    const graceMs = 800;
    const t0 = performance.now();
    const outcome = await stopQemu(q, graceMs);
    const ms = performance.now() - t0;
    assertEquals(outcome, "killed");
    await waitGone(q.pid);
    assertEquals(await lockedPid(vm.files.pidFile), null);
    assert(ms >= graceMs - 20, `killed after ${ms} ms, before the grace window`);
    assert(ms < 3 * graceMs, `killed after ${ms} ms: far more than one grace window`);
  } finally {
    await vm.cleanup();
  }
});
