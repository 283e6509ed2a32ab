/**
 * The CLI's reachability features in process (fake Io, in-process API): `vm create --ssh-key`
 * (files, inline, `~`, a private key refused before any request), `vm create --wait=cloud-init`
 * (event stream and polling), `vm get` (cloud_init, NICs; `-o yaml` the manifest, `-o json`
 * the raw view), `vm list -o wide` (ADDRESSES) and `vm ssh` (the ssh argv; no address).
 * `runSsh` runs a fake `ssh` found on PATH for real.
 */
import { Command } from "commander";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { run } from "../../cli/main.ts";
import { addGlobalOptions } from "../../cli/common.ts";
import { addVmSshCommand, runSsh } from "../../cli/commands/vm_ssh.ts";
import { CliError } from "../../cli/errors.ts";
import type { Vm } from "../../shared/api/vms.ts";
import {
  type FakeIo,
  fakeIo,
  json,
  routesFetch,
  type Seen,
  taskFixture,
  uuid,
  vmFixture,
} from "./fixtures.ts";

const API = { OTHERIX_SERVER: "http://cp.test", OTHERIX_API_TOKEN: "otx_test" };
const ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhcFOCBiy6KxO6Ah7vJwE0nD2hX7OKP8n0z3T2IdnJH me@ed";
const RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 you@rsa";
const DONE = {
  status: "done" as const,
  detail: "Cloud-init v. 0.0-otherix-test finished at Mon, 30 Nov 2026 08:00:00 +0000.",
  at: "2026-11-30T08:00:01.000Z",
};
const NICS = [
  {
    index: 0,
    network: "lan",
    mac: "52:54:00:aa:00:01",
    addresses: [
      { address: "192.168.1.21", prefix_length: null, source: "neighbour" as const },
      { address: "192.168.1.20", prefix_length: 24, source: "ipam" as const },
    ],
  },
  { index: 1, network: "backend", mac: "52:54:00:aa:00:02", addresses: [] },
];

function frame(event: string, data: unknown, id?: string): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n${id ? `id: ${id}\n` : ""}\n`;
}

function sse(chunks: string[]): Response {
  const enc = new TextEncoder();
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      if (i < chunks.length) return c.enqueue(enc.encode(chunks[i++]));
      return new Promise<void>(() => {}); // stays open until cancelled
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

const vmEvent = (type: string, vm: unknown, rev: string) =>
  frame(type, { revision: rev, kind: "vm", type, name: "demo-vm", object: vm }, rev);

Deno.test("vm create --ssh-key: @FILE (every key line, ~ expanded) and inline, in order", async (t) => {
  await t.step("keys reach the request as ssh_authorized_keys", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: { ...API, HOME: "/home/me" },
      files: { "/home/me/.ssh/id_ed25519.pub": `${ED}\n`, "keys.pub": `# team\n${RSA}\n\n${ED}\n` },
      fetch: routesFetch({ "POST /v1/vms": () => json(taskFixture(), 202) }, seen),
    });
    const code = await run([
      "vm",
      "create",
      "demo-vm",
      "--image-url",
      "http://img/x.img",
      "--ssh-key",
      "@~/.ssh/id_ed25519.pub",
      "--ssh-key",
      "@keys.pub",
      "--ssh-key",
      ` ${RSA} `,
    ], io);
    assertEquals(code, 0, io.stderr);
    assertEquals((seen[0].body as { ssh_authorized_keys: string[] }).ssh_authorized_keys, [
      ED,
      RSA,
      ED,
      RSA,
    ]);
  });

  await t.step(
    "a private key file, a missing file, an empty file: usage errors, no request",
    async () => {
      for (
        const [file, content, why] of [
          [
            "id_ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
            /holds a private key: pass the public key \(id_ed25519\.pub\)/,
          ],
          ["missing.pub", undefined, /cannot read --ssh-key file missing\.pub/],
          ["empty.pub", "# only a comment\n", /holds no key/],
        ] as const
      ) {
        const seen: Seen[] = [];
        const io = fakeIo({
          env: API,
          files: content === undefined ? {} : { [file]: content },
          fetch: routesFetch({}, seen),
        });
        assertEquals(
          await run(
            ["vm", "create", "v", "--image-url", "http://i/x.img", "--ssh-key", `@${file}`],
            io,
          ),
          1,
        );
        assertMatch(io.stderr, why);
        assert(!io.stderr.includes("b3Blbn"), "the private key is never printed");
        assertEquals(seen, []);
      }
    },
  );
});

Deno.test("vm create --wait=cloud-init: past running until cloud-init finished, or its error", async (t) => {
  const task = taskFixture();
  const done = { ...task, status: "succeeded" as const };
  const vm = (ci: unknown, status = "running") => ({
    ...vmFixture({ status: status as Vm["status"] }),
    cloud_init: ci,
  });

  await t.step("over the event stream: returns on the change to done", async () => {
    const seen: Seen[] = [];
    const io = fakeIo({
      env: API,
      fetch: routesFetch({
        "POST /v1/vms": () => json(task, 202),
        "GET /v1/events": (req) =>
          new URL(req.url).searchParams.get("kind") === "task"
            ? sse([
              frame("added", {
                revision: "5",
                kind: "task",
                type: "added",
                name: task.id,
                object: done,
              }, "5"),
            ])
            : sse([
              vmEvent("added", vm({ status: "pending", detail: null, at: null }), "6"),
              frame("sync", { revision: "6" }, "6"),
              vmEvent("modified", vm(DONE), "7"),
            ]),
      }, seen),
    });
    const code = await run([
      "vm",
      "create",
      "demo-vm",
      "--image-url",
      "http://i/x.img",
      "--wait=cloud-init",
    ], io);
    assertEquals(code, 0, io.stderr);
    assertEquals(
      io.stdout,
      `created task=${task.id} status=pending\nvm running task=${task.id}\nvm demo-vm cloud-init done\n`,
    );
    const vmStream = seen.find((s) => s.path === "/v1/events" && s.query.get("kind") === "vm")!;
    assertEquals(vmStream.query.get("name"), "demo-vm");
  });

  await t.step(
    "polling without the stream; an error line fails with cloud_init_failed",
    async () => {
      let polls = 0;
      const io = fakeIo({
        env: API,
        fetch: routesFetch({
          "POST /v1/vms": () => json(task, 202),
          "GET /v1/tasks/*": () => json(done),
          "GET /v1/vms/demo-vm": () =>
            json(
              ++polls < 3 ? vm({ status: "pending", detail: null, at: null }) : vm({
                status: "error",
                detail: "util.py[WARNING]: Failed to run module scripts-user",
                at: DONE.at,
              }),
            ),
        }),
      });
      const code = await run([
        "vm",
        "create",
        "demo-vm",
        "--image-url",
        "http://i/x.img",
        "--wait",
        "cloud-init",
      ], io);
      assertEquals(code, 1);
      assertEquals(polls, 3);
      assertStringIncludes(
        io.stderr,
        "api_error: cloud_init_failed: vm demo-vm: cloud-init reported an error: util.py[WARNING]: Failed to run module scripts-user\n",
      );
    },
  );

  await t.step(
    "a VM that fails first: vm_invalid_state; a timeout says where it stood",
    async () => {
      const failedIo = fakeIo({
        env: API,
        fetch: routesFetch({
          "POST /v1/vms": () => json(task, 202),
          "GET /v1/tasks/*": () => json(done),
          "GET /v1/vms/demo-vm": () => json(vm(null, "failed")),
        }),
      });
      assertEquals(
        await run(
          ["vm", "create", "demo-vm", "--image-url", "http://i/x.img", "--wait=cloud-init"],
          failedIo,
        ),
        1,
      );
      assertStringIncludes(
        failedIo.stderr,
        "api_error: vm_invalid_state: vm demo-vm is failed; cloud-init cannot finish\n",
      );

      const slow = fakeIo({
        env: API,
        fetch: routesFetch({
          "POST /v1/vms": () => json(task, 202),
          "GET /v1/tasks/*": () => json(done),
          "GET /v1/vms/demo-vm": () => json(vm({ status: "pending", detail: null, at: null })),
        }),
      });
      const code = await run(
        [
          "vm",
          "create",
          "demo-vm",
          "--image-url",
          "http://i/x.img",
          "--wait=cloud-init",
          "--wait-timeout",
          "20s",
        ],
        slow,
      );
      assertEquals(code, 1);
      assertMatch(
        slow.stderr,
        /error: timed out after 1\ds waiting for cloud-init on vm demo-vm \(cloud_init: pending, status: running\)/,
      );
    },
  );

  await t.step("an unknown --wait condition is a usage error", async () => {
    const io = fakeIo({ env: API, fetch: routesFetch({}) });
    assertEquals(
      await run(["vm", "create", "v", "--image-url", "http://i/x.img", "--wait=ssh"], io),
      1,
    );
    assertMatch(io.stderr, /--wait.*Allowed choices are running, cloud-init/s);
  });
});

Deno.test("vm get / list: cloud_init, NIC addresses; -o yaml is the manifest, -o json the view", async (t) => {
  const raw = { ...vmFixture(), cloud_init: DONE, nics: NICS };
  const fetch = routesFetch({
    "GET /v1/vms/demo-vm": () => json(raw),
    "GET /v1/vms": () =>
      json({ items: [raw, vmFixture({ name: "plain", id: uuid(2) })], next_cursor: null }),
  });

  await t.step("get: cloud_init: done and each NIC", async () => {
    const io = fakeIo({ env: API, fetch });
    assertEquals(await run(["vm", "get", "demo-vm"], io), 0, io.stderr);
    assertStringIncludes(
      io.stdout,
      "cloud_init: done\nnics:\n  nic0:\n    network: lan\n    mac: 52:54:00:aa:00:01\n" +
        "    addresses: 192.168.1.21 (neighbour), 192.168.1.20/24 (ipam)\n  nic1:\n" +
        "    network: backend\n" +
        "    mac: 52:54:00:aa:00:02\n    addresses: -\ncreated_at: ",
    );
  });

  await t.step("get -o yaml: an apply-ready VM manifest; -o json: the raw view", async () => {
    const io = fakeIo({ env: API, fetch });
    assertEquals(await run(["vm", "get", "demo-vm", "-o", "yaml"], io), 0, io.stderr);
    const m = parse(io.stdout);
    assertEquals([m.apiVersion, m.kind, m.metadata], ["otherix/v1", "VM", { name: "demo-vm" }]);
    assertEquals(m.spec.network, "lan");
    assert(!("status" in m) && !("userData" in m.spec) && !("diskGiB" in m.spec));
    const j = fakeIo({ env: API, fetch });
    assertEquals(await run(["vm", "get", "demo-vm", "-o", "json"], j), 0);
    assertEquals(JSON.parse(j.stdout).cloud_init, DONE);
  });

  await t.step("list -o wide: an ADDRESSES column", async () => {
    const io = fakeIo({ env: API, fetch });
    assertEquals(await run(["vm", "list", "-o", "wide"], io), 0, io.stderr);
    const [header, first, second] = io.stdout.split("\n");
    assertMatch(header, /^NAME\s+STATUS\s+NODE\s+POOL\s+IMAGE\s+AGE\s+ADDRESSES$/);
    assertMatch(first, /^demo-vm\s.*\s192\.168\.1\.21,192\.168\.1\.20$/);
    assertMatch(second, /^plain\s.*\s-$/);
    const plain = fakeIo({ env: API, fetch });
    await run(["vm", "list"], plain);
    assert(!plain.stdout.includes("ADDRESSES"));
  });
});

/** Runs `vm ssh …` on a program with the injected runner; returns exit code and io. */
async function ssh(
  args: string[],
  vm: unknown,
): Promise<{ code: number; io: FakeIo; calls: string[][]; exits: number[] }> {
  const io = fakeIo({ env: API, fetch: routesFetch({ "GET /v1/vms/*": () => json(vm) }) });
  const calls: string[][] = [];
  const exits: number[] = [];
  const program = new Command("otherix").exitOverride();
  addGlobalOptions(program);
  addVmSshCommand(program.command("vm"), io, (a) => {
    calls.push(a);
    return Promise.resolve(a.includes("false") ? 3 : 0);
  }, (c) => exits.push(c));
  try {
    await program.parseAsync(["vm", "ssh", ...args], { from: "user" });
    return { code: 0, io, calls, exits };
  } catch (e) {
    if (!(e instanceof CliError)) throw e;
    io.err(e.render() + "\n");
    return { code: 1, io, calls, exits };
  }
}

Deno.test("vm ssh: the system ssh against the first address; -l, -i; ARGS after --", async (t) => {
  const raw = { ...vmFixture(), nics: [{ ...NICS[1] }, { ...NICS[0] }] }; // index order counts
  await t.step("argv", async () => {
    const r = await ssh(["demo-vm", "-l", "ubuntu", "-i", "/k/id", "--", "uname", "-a"], raw);
    assertEquals(r.code, 0, r.io.stderr);
    assertEquals(r.calls, [["-l", "ubuntu", "-i", "/k/id", "192.168.1.20", "uname", "-a"]]);
    assertEquals(r.exits, []);
    assertEquals((await ssh(["demo-vm"], raw)).calls, [["192.168.1.20"]]);
  });
  await t.step("ssh's exit status becomes the CLI's", async () => {
    assertEquals((await ssh(["demo-vm", "--", "false"], raw)).exits, [3]);
  });
  await t.step("no address: vm_has_no_address, ssh not run", async () => {
    const r = await ssh(["demo-vm"], vmFixture());
    assertEquals(r.code, 1);
    assertEquals(r.calls, []);
    assertMatch(
      r.io.stderr,
      /^api_error: vm_has_no_address: vm demo-vm has no known address \(it has no NIC on an Otherix network/,
    );
    const r2 = await ssh(["demo-vm"], { ...vmFixture(), nics: [NICS[1]] });
    assertMatch(r2.io.stderr, /no known address yet/);
  });
});

Deno.test("runSsh: runs ssh from PATH with the arguments, returns its status", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-ssh-" });
  const path = Deno.env.get("PATH") ?? "";
  try {
    await Deno.writeTextFile(
      `${dir}/ssh`,
      `#!/bin/sh\nprintf '%s\\n' "$@" > "${dir}/argv"\nexit 7\n`,
      { mode: 0o755 },
    );
    Deno.env.set("PATH", `${dir}:${path}`);
    assertEquals(await runSsh(["-l", "root", "10.0.0.5", "echo", "a b"]), 7);
    assertEquals(await Deno.readTextFile(`${dir}/argv`), "-l\nroot\n10.0.0.5\necho\na b\n");
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(dir, { recursive: true });
  }
});
