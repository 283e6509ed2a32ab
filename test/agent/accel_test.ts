import { assertEquals, assertStringIncludes } from "../assert.ts";
import {
  describeDecision,
  detectAccelerator,
  existsViaQemuImg,
  type HostProbe,
  kvmSmokeTest,
  realHostProbe,
} from "../../agent/accel.ts";

/** A fake host: `files` exist; `/dev/kvm` opens unless `openError` is set. */
function fakeHost(files: string[], opts: { arch?: string; openError?: string } = {}): HostProbe {
  const set = new Set(files);
  return {
    arch: opts.arch ?? "x86_64",
    exists: (p) => Promise.resolve(set.has(p)),
    openReadWrite: (p) =>
      Promise.resolve(!set.has(p) ? "No such file or directory" : opts.openError ?? null),
  };
}

const WORKING_INTEL = ["/dev/kvm", "/sys/module/kvm", "/sys/module/kvm_intel"];

Deno.test("accel: auto picks kvm on a host with working KVM", async () => {
  const d = await detectAccelerator("auto", fakeHost(WORKING_INTEL));
  assertEquals(d.accelerator, "kvm");
  assertEquals(describeDecision(d), "accelerator: kvm (kvm usable)");
  // AMD hosts and arm64 hosts (KVM built in) too.
  assertEquals(
    (await detectAccelerator("auto", fakeHost(["/dev/kvm", "/sys/module/kvm_amd"]))).accelerator,
    "kvm",
  );
  assertEquals(
    (await detectAccelerator("auto", fakeHost(["/dev/kvm"], { arch: "aarch64" }))).accelerator,
    "kvm",
  );
  // A failing smoke test vetoes an otherwise usable KVM.
  const smoke = await detectAccelerator("auto", {
    ...fakeHost(WORKING_INTEL),
    kvmSmokeTest: () => Promise.resolve("failed to set MSR 0x10a"),
  });
  assertEquals(smoke.accelerator, "tcg");
  assertEquals(
    smoke.reason,
    "kvm unusable: qemu cannot start a KVM guest: failed to set MSR 0x10a",
  );
});

Deno.test("accel: auto falls back to tcg without /dev/kvm", async () => {
  const d = await detectAccelerator("auto", fakeHost(["/sys/module/kvm_intel"]));
  assertEquals(d.accelerator, "tcg");
  assertEquals(describeDecision(d), "accelerator: tcg (kvm unusable: /dev/kvm does not exist)");
});

Deno.test("accel: auto treats a PVM-only nested KVM as unusable", async () => {
  const d = await detectAccelerator(
    "auto",
    fakeHost(["/dev/kvm", "/sys/module/kvm", "/sys/module/kvm_pvm", "/sys/module/kvm_intel"]),
  );
  assertEquals(d.accelerator, "tcg");
  assertStringIncludes(d.reason, "PVM-only nested KVM");
  assertEquals(
    describeDecision(d),
    "accelerator: tcg (kvm unusable: /dev/kvm is PVM-only nested KVM (/sys/module/kvm_pvm))",
  );
});

Deno.test("accel: auto falls back when /dev/kvm cannot be opened or no vendor module", async () => {
  const denied = await detectAccelerator("auto", fakeHost(WORKING_INTEL, { openError: "EACCES" }));
  assertEquals(denied.accelerator, "tcg");
  assertStringIncludes(denied.reason, "cannot open /dev/kvm read-write: EACCES");
  const noVendor = await detectAccelerator("auto", fakeHost(["/dev/kvm", "/sys/module/kvm"]));
  assertEquals(noVendor.accelerator, "tcg");
  assertStringIncludes(noVendor.reason, "neither kvm_intel nor kvm_amd");
});

Deno.test("accel: forced kvm is kvm even when unusable, with a warning", async () => {
  const ok = await detectAccelerator("kvm", fakeHost(WORKING_INTEL));
  assertEquals([ok.accelerator, ok.warning], ["kvm", null]);
  const pvm = await detectAccelerator("kvm", fakeHost([...WORKING_INTEL, "/sys/module/kvm_pvm"]));
  assertEquals(pvm.accelerator, "kvm");
  assertStringIncludes(pvm.warning ?? "", "PVM-only");
  assertEquals(describeDecision(pvm), "accelerator: kvm (forced by qemu.accelerator)");
});

Deno.test("accel: forced tcg is tcg even with working KVM", async () => {
  const d = await detectAccelerator("tcg", fakeHost(WORKING_INTEL));
  assertEquals(d.accelerator, "tcg");
  assertEquals(d.reason, "forced by qemu.accelerator");
});

Deno.test("accel: this machine's KVM (absent, or PVM-only nested) is refused: tcg", async () => {
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  const devKvm = await exists("/dev/kvm");
  const pvm = await exists("/sys/module/kvm_pvm");
  const probe = realHostProbe({ qemuBinary: "qemu-system-x86_64", qemuImg: "qemu-img" });
  const d = await detectAccelerator("auto", probe);
  // qemu-img as an existence probe (used inside the sandbox) agrees with the host.
  assertEquals(await existsViaQemuImg("qemu-img", "/dev/kvm"), devKvm);
  assertEquals(await existsViaQemuImg("qemu-img", "/sys/module/kvm_pvm"), pvm);
  assertEquals(await existsViaQemuImg("qemu-img", "/sys/module/otherix_no_such_module"), false);
  if (!devKvm) {
    assertEquals([d.accelerator, d.reason], ["tcg", "kvm unusable: /dev/kvm does not exist"]);
    return;
  }
  if (!pvm) return; // a host with working KVM: covered by the fake-host cases above
  assertEquals(d.accelerator, "tcg");
  assertStringIncludes(d.reason, "PVM-only nested KVM");
  // The functional probe sees the same thing: `-cpu host` aborts on PVM.
  const smoke = await kvmSmokeTest("qemu-system-x86_64", "x86_64", 15_000);
  assertStringIncludes(smoke ?? "", "failed to set MSR");
});
