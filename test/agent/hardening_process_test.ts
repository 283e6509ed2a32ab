/**
 * Issue 9 hardening on the real `otherix-agent` process under its permission sandbox, against
 * a fake control plane, over mTLS:
 * - a request body that is not sent as JSON is refused with 415 `unsupported_media_type` on
 *   every JSON route, before anything happens (shared/http.ts `requireJsonContentType`);
 * - a VM created from an image URL with credentials: the download uses them, yet no file the
 *   agent keeps (`vm.json` included, agent/vms.ts) and no log line (shared/log.ts) has them.
 *
 * One tiny QEMU guest (TCG, a blank raw disk: SeaBIOS finds nothing to boot).
 */
import { assert, assertEquals } from "../assert.ts";
import { AgentTaskSchema } from "../../shared/api/agent.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { startFakeCp } from "./fake_cp.ts";
import {
  killQemus,
  listDir,
  spawnSandboxedAgent,
  tinyRawImage,
  waitUntil,
  writeBootstrapFiles,
} from "./helpers.ts";

const USER = "backup";
const PASSWORD = "hunter2-Zq9";

/** Serves `image` at `/img/tiny.img` to HTTP Basic `USER:PASSWORD` only; counts requests. */
function serveWithBasicAuth(image: Uint8Array<ArrayBuffer>) {
  const seen = { authorized: 0, refused: 0 };
  const expected = `Basic ${btoa(`${USER}:${PASSWORD}`)}`;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (req.headers.get("authorization") !== expected) {
      seen.refused++;
      return new Response("who are you", { status: 401 });
    }
    seen.authorized++;
    return new URL(req.url).pathname === "/img/tiny.img"
      ? new Response(image)
      : new Response("not found", { status: 404 });
  });
  return { server, seen, hostPort: `127.0.0.1:${server.addr.port}` };
}

/** Every regular file under `dir` (recursively). */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await filesUnder(p));
    else if (e.isFile) out.push(p);
  }
  return out;
}

Deno.test("agent process: 415 for non-JSON bodies; image URL credentials stored and logged nowhere", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otx-agenth-" });
  const cp = await startFakeCp();
  const images = serveWithBasicAuth(await tinyRawImage());
  const poolPath = `${root}/state/pools/default`;
  cp.desiredPools = [{ name: "default", path: poolPath }];
  for (const d of ["etc", "state", "run"]) await Deno.mkdir(`${root}/${d}`, { recursive: true });
  await Deno.writeTextFile(
    `${root}/etc/agent.yaml`,
    `paths:\n  config_dir: ${root}/etc\n  state_dir: ${root}/state\n  run_dir: ${root}/run\n` +
      `server:\n  listen: "127.0.0.1:0"\nheartbeat:\n  interval_seconds: 1\n` +
      `images:\n  url_policy: {allow_loopback: true}\nqemu:\n  accelerator: tcg\n` +
      `log:\n  level: debug\n`,
  );
  await writeBootstrapFiles(root, cp);
  const agent = spawnSandboxedAgent(root);
  const { child, reading } = agent;
  const client = createTlsClient({ caPem: cp.ca.certPem, ...await cp.cpClient() });
  let base = "";
  /** One call to the agent's mTLS API; `type` null sends no Content-Type. */
  const call = async (method: string, path: string, body?: string, type?: string | null) => {
    const headers = new Headers();
    if (type) headers.set("content-type", type);
    const res = await fetch(`${base}${path}`, {
      method,
      client,
      headers,
      // Bytes: fetch adds no Content-Type of its own (a string body would get text/plain).
      body: body === undefined ? undefined : new TextEncoder().encode(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  };
  const createBody = (taskId: string, vmId: string, imageUrl: string) =>
    JSON.stringify({
      task_id: taskId,
      vm: {
        id: vmId,
        name: "creds",
        image_url: imageUrl,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 128,
        disk_gib: 1,
      },
      pool: { name: "default", path: poolPath },
    });
  try {
    await waitUntil(
      () => agent.output().includes("agent: serving mTLS API"),
      60_000,
      `the agent's serving line\n${agent.output()}`,
    );
    const serving = JSON.parse(
      agent.output().split("\n").find((l) => l.includes("agent: serving mTLS"))!,
    );
    base = `https://127.0.0.1:${String(serving.listen).split(":").pop()}`;
    await waitUntil(async () => (await Deno.stat(poolPath).catch(() => null)) !== null, 30_000);

    await t.step(
      "a body not sent as JSON is 415 on every JSON route; nothing changes",
      async () => {
        const taskId = crypto.randomUUID();
        const vmId = crypto.randomUUID();
        const create = createBody(taskId, vmId, `http://${images.hostPort}/img/tiny.img`);
        const json = JSON.stringify;
        const action = json({ task_id: taskId, action: "stop" });
        const pools = json({ pools: [{ name: "extra", path: `${root}/state/pools/extra` }] });
        const scan = json({ name: "default", path: poolPath });
        const refused: [string, string, string, string | null][] = [
          ["POST", "/v1/vms", create, "text/plain;charset=UTF-8"],
          ["POST", "/v1/vms", create, "application/x-www-form-urlencoded"],
          ["POST", "/v1/vms", create, null],
          ["POST", `/v1/vms/${vmId}/actions`, action, "text/plain"],
          ["PUT", "/v1/pools", pools, "text/yaml"],
          ["PUT", "/v1/networks", json({ networks: [] }), "text/plain"],
          ["POST", "/v1/pools/scan", scan, "text/plain"],
        ];
        for (const [method, path, body, type] of refused) {
          const res = await call(method, path, body, type);
          assertEquals(
            [res.status, res.json.error.code, res.json.error.details],
            [415, "unsupported_media_type", { content_type: type?.split(";")[0] ?? null }],
            `${method} ${path} as ${type}`,
          );
        }
        const task = await call("GET", `/v1/tasks/${taskId}`);
        assertEquals([task.status, task.json.error.code], [404, "task_not_found"]);
        assertEquals((await call("GET", "/v1/vms")).json.items, []);
        assertEquals(await listDir(`${root}/state/vms`), []);
        assertEquals(await listDir(`${root}/state/pools`), ["default"]);
        assertEquals(images.seen, { authorized: 0, refused: 0 }, "no download started");
        // A body-less request needs no Content-Type (the 415 is about bodies only).
        const del = await call(
          "DELETE",
          `/v1/vms/${crypto.randomUUID()}?task_id=${crypto.randomUUID()}`,
        );
        assertEquals(del.status, 202);
      },
    );

    await t.step(
      "a credentialed image URL: used for the download, stored and logged nowhere",
      async () => {
        const taskId = crypto.randomUUID();
        const vmId = crypto.randomUUID();
        const url = `http://${USER}:${PASSWORD}@${images.hostPort}/img/tiny.img`;
        const shown = `http://***@${images.hostPort}/img/tiny.img`;
        const before = images.seen.authorized;
        const created = await call(
          "POST",
          "/v1/vms",
          createBody(taskId, vmId, url),
          "application/json; charset=utf-8",
        );
        assertEquals(created.status, 202, JSON.stringify(created.json));
        let task = AgentTaskSchema.parse(created.json);
        await waitUntil(
          async () => {
            task = AgentTaskSchema.parse((await call("GET", `/v1/tasks/${taskId}`)).json);
            return isTerminal(task.status);
          },
          60_000,
          "the create task",
        );
        assertEquals(task.status, "succeeded", JSON.stringify(task.error));
        assert(images.seen.authorized > before, "downloaded with the credentials");

        const manifest = JSON.parse(await Deno.readTextFile(`${root}/state/vms/${vmId}/vm.json`));
        assertEquals(manifest.image_url, shown);
        // No file the agent keeps has them (vm.json, the image cache's sidecars, disk, seed…).
        const files = await filesUnder(root);
        assert(files.some((f) => f.endsWith("/vm.json")) && files.length > 5, files.join("\n"));
        const latin1 = new TextDecoder("latin1");
        for (const f of files) {
          assert(
            !latin1.decode(await Deno.readFile(f)).includes(PASSWORD),
            `${f} has the password`,
          );
        }
        // The log mentions the image by its redacted URL, never with the password.
        const lines = agent.output().split("\n");
        assert(
          lines.some((l) => l.includes(shown)),
          `no log line names ${shown}:\n${agent.output()}`,
        );
        assertEquals(lines.filter((l) => l.includes(PASSWORD)), []);

        const del = await call("DELETE", `/v1/vms/${vmId}?task_id=${crypto.randomUUID()}`);
        assertEquals(del.status, 202);
        await waitUntil(
          async () => {
            const t = (await call("GET", `/v1/tasks/${del.json.id}`)).json;
            return isTerminal(t.status);
          },
          30_000,
          "the delete task",
        );
        assertEquals(await listDir(`${root}/state/vms`), []);
      },
    );

    await t.step("SIGTERM: the agent exits 0", async () => {
      child.kill("SIGTERM");
      assertEquals((await child.status).code, 0, agent.output());
    });
  } finally {
    client.close();
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
    await child.status;
    await reading;
    await killQemus(`${root}/run`);
    await images.server.shutdown();
    await cp.close();
    await Deno.remove(root, { recursive: true });
  }
});
