import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { ApiError } from "../../shared/errors.ts";
import { buildSeedIso, DEFAULT_USER_DATA, metaData } from "../../agent/cloudinit.ts";
import { createOverlay, GIB, imageInfo, overlaySize } from "../../agent/disks.ts";

async function sh(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

const VM_ID = "0b5c8a3e-6f5e-4d0e-9a59-0c0e7f1d2a11";

Deno.test("cloudinit: seed ISO is labelled cidata and holds user-data and meta-data", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otherix-seed-" });
  try {
    const userData = "#cloud-config\nruncmd:\n  - echo otherix-marker: hello\n";
    await buildSeedIso({
      isoBuilder: "genisoimage",
      vmId: VM_ID,
      hostname: "demo-vm",
      userData,
      output: `${dir}/seed.iso`,
    });
    const desc = await sh("isoinfo", ["-d", "-i", `${dir}/seed.iso`]);
    assertStringIncludes(desc, "Volume id: cidata");
    assertStringIncludes(desc, "Rock Ridge signatures");
    assertStringIncludes(desc, "Joliet");
    // Rock Ridge names, as Linux mounts them.
    const listing = await sh("isoinfo", ["-R", "-f", "-i", `${dir}/seed.iso`]);
    assertEquals(listing.trim().split("\n").sort(), ["/meta-data", "/user-data"]);
    assertEquals(
      await sh("isoinfo", ["-R", "-i", `${dir}/seed.iso`, "-x", "/meta-data"]),
      `instance-id: ${VM_ID}\nlocal-hostname: demo-vm\n`,
    );
    assertEquals(
      await sh("isoinfo", ["-R", "-i", `${dir}/seed.iso`, "-x", "/user-data"]),
      userData,
    );
    // Only the ISO remains: staging files are gone.
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, ["seed.iso"]);

    // Default user-data.
    await buildSeedIso({
      isoBuilder: "genisoimage",
      vmId: VM_ID,
      hostname: "x",
      output: `${dir}/seed2.iso`,
    });
    assertEquals(
      await sh("isoinfo", ["-R", "-i", `${dir}/seed2.iso`, "-x", "/user-data"]),
      DEFAULT_USER_DATA,
    );
    assertEquals(metaData(VM_ID, "x"), `instance-id: ${VM_ID}\nlocal-hostname: x\n`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cloudinit: a failing ISO builder → vm_create_failed, nothing left", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otherix-seed-" });
  try {
    const err = await assertRejects(() =>
      buildSeedIso({
        isoBuilder: "genisoimage",
        vmId: VM_ID,
        hostname: "x",
        output: `${dir}/missing-subdir/seed.iso`,
      })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "vm_create_failed");
    // A builder that exits non-zero (qemu-img does not understand genisoimage's flags).
    const err2 = await assertRejects(() =>
      buildSeedIso({ isoBuilder: "qemu-img", vmId: VM_ID, hostname: "x", output: `${dir}/s.iso` })
    );
    assertEquals((err2 as ApiError).code, "vm_create_failed");
    assertStringIncludes(err2.message, "qemu-img failed (exit code 1)");
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("disks: qcow2 overlay backed by a raw image, sized max(disk_gib, image)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otherix-disk-" });
  try {
    await sh("qemu-img", ["create", "-f", "raw", `${dir}/base.img`, "1M"]);
    const info = await imageInfo("qemu-img", `${dir}/base.img`);
    assertEquals(info, { format: "raw", virtualSize: 1024 * 1024 });
    await createOverlay("qemu-img", `${dir}/base.img`, info, `${dir}/disk.qcow2`, 2);
    const overlay = JSON.parse(
      await sh("qemu-img", ["info", "--output=json", `${dir}/disk.qcow2`]),
    );
    assertEquals(overlay.format, "qcow2");
    assertEquals(overlay["virtual-size"], 2 * GIB);
    assertEquals(overlay["backing-filename"], `${dir}/base.img`);
    assertEquals(overlay["backing-filename-format"], "raw");

    // A qcow2 image larger than disk_gib keeps its own size.
    await sh("qemu-img", ["create", "-f", "qcow2", `${dir}/big.qcow2`, "3G"]);
    const big = await imageInfo("qemu-img", `${dir}/big.qcow2`);
    assertEquals(big, { format: "qcow2", virtualSize: 3 * GIB });
    assertEquals(overlaySize(1, big.virtualSize), 3 * GIB);

    // An image with its own backing file is refused.
    const e = await assertRejects(() => imageInfo("qemu-img", `${dir}/disk.qcow2`));
    assertEquals((e as ApiError).code, "vm_create_failed");
    assertStringIncludes(e.message, "backing file");
    // A qcow2 whose clusters live in an external data file (any host file) is refused too.
    await Deno.writeTextFile(`${dir}/host-secret`, "secret\n");
    await Deno.truncate(`${dir}/host-secret`, 1024 * 1024);
    await sh("qemu-img", [
      "create",
      "-f",
      "qcow2",
      "-o",
      `data_file=${dir}/host-secret,data_file_raw=on`,
      `${dir}/ext.qcow2`,
      "1M",
    ]);
    const e3 = await assertRejects(() => imageInfo("qemu-img", `${dir}/ext.qcow2`));
    assertEquals((e3 as ApiError).code, "vm_create_failed");
    assertStringIncludes(e3.message, "external data file");
    // Not an image at all.
    const e2 = await assertRejects(() => imageInfo("qemu-img", `${dir}/nope.img`));
    assertEquals((e2 as ApiError).code, "vm_create_failed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
