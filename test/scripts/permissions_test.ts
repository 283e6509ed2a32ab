import { assert, assertEquals } from "../assert.ts";
import {
  AGENT_RUN_ALLOWLIST,
  denoRunArgs,
  permissionFlags,
  STANDARD_SANDBOX,
} from "../../scripts/permissions.ts";
import { compileArgs } from "../../scripts/compile.ts";

const roots = { config: "/t/etc/otherix", state: "/t/var/lib/otherix", run: "/t/run/otherix" };

Deno.test("permissions: the agent may run only QEMU, qemu-img, the ISO builder, pgrep, pkill", () => {
  const flags = permissionFlags("otherix-agent", roots);
  assertEquals(flags.filter((f) => f.startsWith("--allow-run")), [
    "--allow-run=qemu-system-x86_64,qemu-system-aarch64,qemu-img,genisoimage,pgrep,pkill,df,ps," +
    "ip,bridge,iptables,sysctl,dnsmasq",
  ]);
  assertEquals(
    flags.find((f) => f.startsWith("--allow-run")),
    `--allow-run=${AGENT_RUN_ALLOWLIST}`,
  );
  const read = flags.find((f) => f.startsWith("--allow-read="))!.split("=")[1].split(",");
  assertEquals(read, [roots.config, roots.state, roots.run]);
  const write = flags.find((f) => f.startsWith("--allow-write="))!.split("=")[1].split(",");
  assertEquals(write, [roots.state, roots.run]);
  assert(
    flags.includes(
      "--allow-env=OTHERIX_*,LOG_TOKENS,LOG_STREAM,WS_NO_BUFFER_UTIL,WS_NO_UTF_8_VALIDATE",
    ),
  );
  assert(!flags.some((f) => f === "-A" || f === "--allow-all" || f === "--allow-run"));
});

Deno.test("permissions: the control plane runs only etcd and writes only its data dir", () => {
  const flags = permissionFlags("otherix-api", {
    config: "/t/api.yaml",
    state: "/t/data",
    run: "/t/data",
  });
  assertEquals(flags.filter((f) => f.startsWith("--allow-run")), ["--allow-run=/usr/bin/etcd"]);
  const custom = permissionFlags("otherix-api", {
    config: "/t/api.yaml",
    state: "/t/data",
    run: "/t/data",
    extraRun: ["/opt/etcd/bin/etcd"],
  });
  assert(custom.includes("--allow-run=/usr/bin/etcd,/opt/etcd/bin/etcd"));
  assert(flags.includes("--allow-write=/t/data"));
  assert(flags.includes("--allow-read=/t/api.yaml,/t/data"));
  assert(flags.includes("--unstable-kv"));
});

Deno.test("permissions: compile bakes the standard roots, dev runs use the config's", () => {
  const compiled = compileArgs("otherix-agent", "/out");
  for (const f of permissionFlags("otherix-agent", STANDARD_SANDBOX)) assert(compiled.includes(f));
  assert(
    compiled.includes(
      "--allow-read=/etc/otherix,/var/lib/otherix,/run/otherix",
    ),
  );
  assertEquals(compiled.slice(-3, -1), ["--output", "/out/otherix-agent"]);
  const dev = denoRunArgs("otherix-agent", roots, ["--config", "/t/etc/otherix/agent.yaml"]);
  assertEquals(dev[0], "run");
  assert(dev.at(-3)!.endsWith("/agent/main.ts"));
  assertEquals(dev.slice(-2), ["--config", "/t/etc/otherix/agent.yaml"]);
});
