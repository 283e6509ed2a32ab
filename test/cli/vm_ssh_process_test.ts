/**
 * `otherix vm ssh` as a real CLI process under its sandbox (scripts/permissions.ts: the CLI may
 * run `ssh` and nothing else) against a fake `otherix-api`, with a fake `ssh` first on PATH
 * that records its argv and exits with a chosen status: the address and options reach ssh,
 * ssh's status is the CLI's.
 */
import { join } from "node:path";
import { assertEquals, assertMatch } from "../assert.ts";
import { json, runCli, startFakeApi, vmFixture } from "./fixtures.ts";
import { permissionFlags } from "../../scripts/permissions.ts";

/** The CLI's sandbox lets it run the system `ssh` (scripts/permissions.ts sshClientPaths). */
const CLI_MAY_RUN_SSH = permissionFlags("otherix").some((f) =>
  f.startsWith("--allow-run=") && f.includes("/ssh")
);

Deno.test({
  name: "vm ssh (process): the system ssh from PATH with the VM's address; its exit status",
  // Runs once the CLI's sandbox grants `--allow-run=ssh` (without it the CLI says so:
  // `error: this otherix may not run ssh`).
  ignore: !CLI_MAY_RUN_SSH,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "otx-sshp-" });
    const vm = {
      ...vmFixture(),
      nics: [{
        index: 0,
        network: "lan",
        mac: "52:54:00:aa:00:01",
        addresses: [{ address: "192.168.1.20", prefix_length: 24, source: "ipam" }],
      }],
    };
    const api = startFakeApi({ "GET /v1/vms/demo-vm": () => json(vm) });
    try {
      const bin = join(dir, "bin");
      await Deno.mkdir(bin);
      await Deno.writeTextFile(
        join(bin, "ssh"),
        `#!/bin/sh\nprintf '%s\\n' "$@" > "${dir}/argv"\nexit 5\n`,
        { mode: 0o755 },
      );
      const r = await runCli(["vm", "ssh", "demo-vm", "-l", "root", "--", "uname", "-a"], {
        home: dir,
        // This fake client is not where the sandbox expects ssh: allow it too.
        denoFlags: [`--allow-run=${join(bin, "ssh")}`],
        env: {
          OTHERIX_SERVER: api.url,
          OTHERIX_API_TOKEN: "otx_test",
          PATH: `${bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`,
        },
      });
      assertEquals(r.code, 5, r.stderr);
      assertEquals(
        await Deno.readTextFile(join(dir, "argv")),
        "-l\nroot\n192.168.1.20\nuname\n-a\n",
      );

      const none = startFakeApi({ "GET /v1/vms/demo-vm": () => json(vmFixture()) });
      try {
        const n = await runCli(["vm", "ssh", "demo-vm"], {
          home: dir,
          env: { OTHERIX_SERVER: none.url, OTHERIX_API_TOKEN: "otx_test", PATH: bin },
        });
        assertEquals(n.code, 1);
        assertMatch(n.stderr, /^api_error: vm_has_no_address: /);
      } finally {
        await none.close();
      }
    } finally {
      await api.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
