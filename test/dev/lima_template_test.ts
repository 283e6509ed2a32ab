/**
 * dev/lima/otherix-dev.yaml: valid YAML made only of the fields Lima documents (its
 * templates/default.yaml), Ubuntu 24.04 for both architectures with the host's arch, no
 * `nestedVirtualization` (spec: it hard-fails Lima on M1/M2), and a provision script that,
 * run for real here (in a private mount namespace, with `apt-get` / `systemctl` stand-ins),
 * installs QEMU when missing, creates the agent's directories and unit (the same unit as
 * deploy/systemd/) and prints whether KVM or the TCG fallback is in effect.
 *
 * @module
 */
import { join } from "node:path";
import { parse } from "yaml";
import { z } from "zod";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { tempRoot } from "../harness.ts";
import { invocations, STANDINS } from "./helpers.ts";

const TEMPLATE = join(REPO_ROOT, "dev/lima/otherix-dev.yaml");

/**
 * Lima's template fields (lima-vm/lima templates/default.yaml, v1.x), strict at every level
 * this template uses, so a misspelt or invented field fails.
 */
const Image = z.object({
  location: z.string().url(),
  arch: z.enum(["x86_64", "aarch64", "armv7l", "riscv64", "s390x", "ppc64le"]),
  digest: z.string().optional(),
}).strict();
const Provision = z.object({
  mode: z.enum(["system", "user", "boot", "dependency", "ansible", "data"]),
  script: z.string().optional(),
  skipDefaultDependencyResolution: z.boolean().optional(),
  playbook: z.string().optional(),
}).strict();
const PortForward = z.object({
  guestIP: z.string().optional(),
  guestIPMustBeZero: z.boolean().optional(),
  guestPort: z.number().int().optional(),
  guestPortRange: z.tuple([z.number().int(), z.number().int()]).optional(),
  guestSocket: z.string().optional(),
  hostIP: z.string().optional(),
  hostPort: z.number().int().optional(),
  hostPortRange: z.tuple([z.number().int(), z.number().int()]).optional(),
  hostSocket: z.string().optional(),
  proto: z.enum(["tcp", "udp", "any"]).optional(),
  reverse: z.boolean().optional(),
  ignore: z.boolean().optional(),
}).strict();
const LimaTemplate = z.object({
  minimumLimaVersion: z.string().optional(),
  vmType: z.enum(["qemu", "vz", "default"]).optional(),
  vmOpts: z.unknown().optional(),
  os: z.literal("Linux").optional(),
  arch: z.enum(["default", "x86_64", "aarch64"]).optional(),
  images: z.array(Image).min(1),
  cpus: z.number().int().min(1).optional(),
  memory: z.string().regex(/^\d+(\.\d+)?[KMGT]iB$/).optional(),
  disk: z.string().regex(/^\d+(\.\d+)?[KMGT]iB$/).optional(),
  mounts: z.array(z.unknown()).optional(),
  mountType: z.string().optional(),
  mountInotify: z.boolean().optional(),
  mountTypesUnsupported: z.array(z.string()).optional(),
  additionalDisks: z.array(z.unknown()).optional(),
  ssh: z.unknown().optional(),
  caCerts: z.unknown().optional(),
  upgradePackages: z.boolean().optional(),
  containerd: z.object({
    system: z.boolean().optional(),
    user: z.boolean().optional(),
    archives: z.array(z.unknown()).optional(),
  }).strict().optional(),
  provision: z.array(Provision).optional(),
  probes: z.array(z.unknown()).optional(),
  cpuType: z.record(z.string(), z.string()).optional(),
  rosetta: z.unknown().optional(),
  timezone: z.string().optional(),
  firmware: z.unknown().optional(),
  audio: z.unknown().optional(),
  video: z.unknown().optional(),
  networks: z.array(z.unknown()).optional(),
  portForwards: z.array(PortForward).optional(),
  copyToHost: z.array(z.unknown()).optional(),
  message: z.string().optional(),
  env: z.record(z.string(), z.string()).optional(),
  param: z.record(z.string(), z.string()).optional(),
  propagateProxyEnv: z.boolean().optional(),
  hostResolver: z.object({
    enabled: z.boolean().optional(),
    ipv6: z.boolean().optional(),
    hosts: z.record(z.string(), z.string()).optional(),
  }).strict().optional(),
  dns: z.array(z.string()).optional(),
  guestInstallPrefix: z.string().optional(),
  plain: z.boolean().optional(),
  nestedVirtualization: z.boolean().optional(),
}).strict();

Deno.test("lima template: Lima's documented fields, Ubuntu 24.04, native arch, no nested virtualization", () => {
  const text = Deno.readTextFileSync(TEMPLATE);
  const doc = parse(text);
  const t = LimaTemplate.parse(doc);
  // nestedVirtualization is injected at create time on capable hosts only (spec 001).
  assert(!("nestedVirtualization" in doc), "nestedVirtualization must not be in the template");
  assert(!/^nestedVirtualization:/m.test(text));
  assertEquals(t.arch, undefined, "native arch: Lima uses the host's");
  assertEquals(t.vmType, "vz", "nestedVirtualization works with vz only");
  assertEquals(t.images.map((i) => i.arch).sort(), ["aarch64", "x86_64"]);
  for (const i of t.images) {
    assert(
      /\/noble\/.*ubuntu-24\.04-server-cloudimg-(arm64|amd64)\.img$/.test(i.location),
      i.location,
    );
    assertEquals(i.location.endsWith("arm64.img"), i.arch === "aarch64");
  }
  assertEquals(t.portForwards?.find((p) => p.guestPort === 9443)?.hostPort, 9443);
  assertEquals(t.provision?.map((p) => p.mode), ["system"]);
});

/** The system provision script of the template. */
function provisionScript(): string {
  const doc = LimaTemplate.parse(parse(Deno.readTextFileSync(TEMPLATE)));
  return doc.provision![0].script!;
}

Deno.test("lima template: the provision script carries deploy/systemd/otherix-agent.service", () => {
  const script = provisionScript();
  const m = /<<'UNIT'\n([\s\S]*?)\nUNIT\n/.exec(script);
  assert(m, "a quoted heredoc UNIT");
  assertEquals(
    m[1] + "\n",
    Deno.readTextFileSync(join(REPO_ROOT, "deploy/systemd/otherix-agent.service")),
  );
});

/**
 * Runs the provision script as root in a private mount namespace: tmpfs over the paths it
 * writes (/etc/systemd/system, /etc/otherix, /var/lib/otherix) and over /dev (the nodes a shell
 * needs bound back, plus a character device at /dev/kvm when `kvm`: this machine may have no
 * KVM); its PATH holds the stand-ins for apt-get and systemctl and only the tools it uses, with
 * or without `qemu-img` and `genisoimage`. Copies what it wrote to `out`.
 */
async function provision(
  root: string,
  out: string,
  opts: { kvm: boolean; qemu: boolean },
): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = join(root, "provision.sh");
  await Deno.writeTextFile(script, provisionScript(), { mode: 0o755 });
  const tools = join(out, "tools");
  await Deno.mkdir(tools, { recursive: true });
  const names = [
    "bash",
    "uname",
    "install",
    "cat",
    ...(opts.qemu ? ["qemu-img", "genisoimage"] : []),
  ];
  for (const n of names) {
    const which = await new Deno.Command("bash", { args: ["-c", `command -v ${n}`] }).output();
    const path = new TextDecoder().decode(which.stdout).trim();
    assert(path, `${n} is installed here`);
    await Deno.symlink(path, join(tools, n));
  }
  const outer = [
    "set -e",
    "for d in /etc/systemd/system /etc/otherix /var/lib/otherix; do",
    "  mkdir -p $d && mount -t tmpfs tmpfs $d; done",
    "save=$(mktemp -d) && mount --bind /dev $save && mount -t tmpfs tmpfs /dev",
    "for n in null zero urandom random tty; do touch /dev/$n && mount --bind $save/$n /dev/$n; done",
    opts.kvm ? "touch /dev/kvm && mount --bind $save/null /dev/kvm" : "",
    `PATH=${STANDINS}:${tools} bash ${script} >${out}/stdout 2>${out}/stderr; echo $? >${out}/code`,
    `cp -a /etc/systemd/system/. ${out}/units/; cp -a /etc/otherix ${out}/etc-otherix`,
    `cp -a /var/lib/otherix ${out}/var-lib-otherix`,
  ].join("\n");
  await Deno.mkdir(join(out, "units"), { recursive: true });
  const res = await new Deno.Command("unshare", {
    args: ["--mount", "--propagation", "private", "bash", "-c", outer],
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", STANDIN_LOG: join(root, "calls.log") },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (res.code !== 0) throw new Error(new TextDecoder().decode(res.stderr));
  return {
    code: Number((await Deno.readTextFile(join(out, "code"))).trim()),
    stdout: await Deno.readTextFile(join(out, "stdout")),
    stderr: await Deno.readTextFile(join(out, "stderr")),
  };
}

Deno.test("lima template: the provision script, run for real", async (t) => {
  const root = await tempRoot("otx-prov");
  try {
    await t.step("a fresh VM without QEMU or /dev/kvm: installs, lays out, says TCG", async () => {
      const out = join(root, "fresh");
      const r = await provision(root, out, { kvm: false, qemu: false });
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(r.stdout, "otherix-dev: no /dev/kvm");
      assertStringIncludes(r.stdout, "the agent runs VMs under TCG");
      const apt = await invocations(join(root, "calls.log"), "apt-get");
      assertEquals(apt[0], "apt-get update -q");
      assert(
        apt[1].startsWith(
          "apt-get install -y -q --no-install-recommends qemu-system-x86 " +
            "qemu-utils genisoimage",
        ),
        apt[1],
      );
      assertEquals(await invocations(join(root, "calls.log"), "systemctl"), [
        "systemctl daemon-reload",
      ]);
      assertEquals(
        await Deno.readTextFile(join(out, "units/otherix-agent.service")),
        await Deno.readTextFile(join(REPO_ROOT, "deploy/systemd/otherix-agent.service")),
      );
      assertEquals((await Deno.stat(join(out, "var-lib-otherix/pools"))).mode! & 0o777, 0o750);
      assert((await Deno.stat(join(out, "etc-otherix"))).isDirectory);
    });

    await t.step("again on a VM with QEMU and /dev/kvm: nothing installed, says KVM", async () => {
      await Deno.remove(join(root, "calls.log"));
      const out = join(root, "again");
      const r = await provision(root, out, { kvm: true, qemu: true });
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(
        r.stdout,
        "otherix-dev: /dev/kvm is present: the agent runs VMs under KVM",
      );
      assertEquals(await invocations(join(root, "calls.log"), "apt-get"), []);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
