/**
 * The shared cloud-init input rules (shared/api/cloud_config.ts) and their zod forms on the VM
 * create request: SSH public keys made by the real `ssh-keygen`, and the malformed ones a
 * user really sends (truncated, private, mistyped, options, a type/blob mismatch); cloud-config
 * user-data (header, one YAML mapping, YAML errors with their line).
 */
import { assert, assertEquals, assertMatch } from "../assert.ts";
import {
  cloudConfigProblem,
  MAX_SSH_KEYS,
  sshPublicKeyProblem,
} from "../../shared/api/cloud_config.ts";
import { VmCreateRequestSchema } from "../../shared/api/vms.ts";

/** Public keys of each type, made by ssh-keygen in a temporary directory. */
async function keygen(): Promise<Record<string, string>> {
  const dir = await Deno.makeTempDir({ prefix: "otx-keys-" });
  const out: Record<string, string> = {};
  try {
    for (
      const [type, extra] of [["ed25519", []], ["rsa", ["-b", "2048"]], ["ecdsa", ["-b", "256"]]]
    ) {
      const file = `${dir}/${type}`;
      const r = await new Deno.Command("ssh-keygen", {
        args: [
          "-q",
          "-t",
          type as string,
          ...(extra as string[]),
          "-N",
          "",
          "-C",
          `me@${type}`,
          "-f",
          file,
        ],
      }).output();
      assert(r.success, new TextDecoder().decode(r.stderr));
      out[type as string] = (await Deno.readTextFile(`${file}.pub`)).trim();
      out[`${type}-private`] = await Deno.readTextFile(file);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}

/** An ssh-ed25519 line whose blob is `fields` (each an RFC 4251 string). */
function forged(type: string, fields: Uint8Array[]): string {
  const parts = fields.flatMap((f) => {
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, f.length);
    return [len, f];
  });
  const blob = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    blob.set(p, off);
    off += p.length;
  }
  return `${type} ${btoa(String.fromCharCode(...blob))} forged`;
}

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("ssh keys: what ssh-keygen makes is accepted; malformed keys are refused, saying why", async (t) => {
  const keys = await keygen();

  await t.step("ed25519, rsa and ecdsa public keys, with and without comment", () => {
    for (const type of ["ed25519", "rsa", "ecdsa"]) {
      assertEquals(sshPublicKeyProblem(keys[type]), null, type);
      const [kt, b64] = keys[type].split(" ");
      assertEquals(sshPublicKeyProblem(`${kt} ${b64}`), null, `${type} without comment`);
    }
  });

  await t.step("refusals", () => {
    const [kt, b64] = keys.ed25519.split(" ");
    const cases: [string, RegExp][] = [
      [keys["ed25519-private"], /private key/],
      [`${kt} ${b64.slice(0, 40)}`, /base64|truncated/],
      [`${kt} ${b64.slice(0, -8)}AAAAAAA=`, /truncated|bytes|trailing/],
      [`ssh-rsa ${b64} mismatched`, /does not match its type ssh-rsa/],
      [`command="ls" ${keys.ed25519}`, /unsupported key type/],
      [`ssh-dss ${b64}`, /unsupported key type/],
      ["AAAAC3NzaC1lZDI1NTE5AAAAI", /must be '<type> <base64 key>/],
      [`${kt} not!base64`, /not valid base64/],
      [`${keys.ed25519}\n${keys.rsa}`, /single line/],
      [forged("ssh-ed25519", [enc("ssh-ed25519"), new Uint8Array(31)]), /31 bytes.*32/],
      [forged("ssh-ed25519", [enc("ssh-ed25519"), new Uint8Array(32), enc("x")]), /trailing/],
      [
        forged("ssh-rsa", [
          enc("ssh-rsa"),
          new Uint8Array([1, 0, 1]),
          new Uint8Array(64).fill(255),
        ]),
        /512 bits, at least 1024/,
      ],
      [
        forged("ecdsa-sha2-nistp256", [
          enc("ecdsa-sha2-nistp256"),
          enc("nistp384"),
          new Uint8Array(65),
        ]),
        /curve/,
      ],
    ];
    for (const [key, why] of cases) {
      const problem = sshPublicKeyProblem(key);
      assert(problem !== null, `accepted: ${key.slice(0, 60)}`);
      assertMatch(problem, why);
      assert(!problem.includes(b64), "the message does not repeat the key");
    }
  });

  await t.step("the create request names the bad key's index; at most 32 keys", () => {
    const base = { name: "vm", image_url: "http://h/x.img", architecture: "amd64" };
    const r = VmCreateRequestSchema.safeParse({
      ...base,
      ssh_authorized_keys: [keys.ed25519, "ssh-ed25519 AAAA", keys.rsa],
    });
    assert(!r.success);
    assertEquals(r.error.issues.map((i) => i.path.join(".")), ["ssh_authorized_keys.1"]);
    assertMatch(r.error.issues[0].message, /^not an SSH public key: /);
    const many = Array.from({ length: MAX_SSH_KEYS + 1 }, () => keys.ed25519);
    assert(!VmCreateRequestSchema.safeParse({ ...base, ssh_authorized_keys: many }).success);
    assert(VmCreateRequestSchema.safeParse({ ...base, ssh_authorized_keys: [keys.ecdsa] }).success);
  });
});

Deno.test("cloud-config: the header, then one YAML mapping (or nothing)", async (t) => {
  await t.step("accepted", () => {
    for (
      const ok of [
        "#cloud-config\n",
        "#cloud-config",
        "#cloud-config  \r\npackages: [htop]\r\n",
        "#cloud-config\n# otherix-marker: hi\n",
        "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 0644\n    content: |\n      a\n",
        "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAA x\n",
      ]
    ) assertEquals(cloudConfigProblem(ok), null, JSON.stringify(ok));
  });

  await t.step("refused, with the reason", () => {
    const cases: [string, RegExp][] = [
      ["", /first line must be '#cloud-config'/],
      ["hi", /first line must be '#cloud-config'/],
      ["#!/bin/sh\necho hi\n", /shell-script user-data is not accepted/],
      ["#cloud-config\n- a\n- b\n", /must be a YAML mapping/],
      ["#cloud-config\njust a string\n", /must be a YAML mapping/],
      ["#cloud-config\na: 1\n---\nb: 2\n", /one YAML document/],
      ["#cloud-config\nok: 1\nbad: [1\n", /not valid YAML at line 4/],
      ["#cloud-config\na: 1\na: 2\n", /not valid YAML at line 3: Map keys must be unique/],
      ["#cloud-config\nssh_authorized_keys: ssh-ed25519 AAAA\n", /list of strings/],
      ["#cloud-config\nssh_authorized_keys: [{a: 1}]\n", /list of strings/],
    ];
    for (const [text, why] of cases) {
      const problem = cloudConfigProblem(text);
      assert(problem !== null, `accepted: ${JSON.stringify(text)}`);
      assertMatch(problem, why);
    }
  });

  await t.step("the create request refuses it as user_data", () => {
    const r = VmCreateRequestSchema.safeParse({
      name: "vm",
      image_url: "http://h/x.img",
      architecture: "amd64",
      user_data: "#!/bin/sh\n",
    });
    assert(!r.success);
    assertEquals(r.error.issues.map((i) => i.path.join(".")), ["user_data"]);
  });
});
