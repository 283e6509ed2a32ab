import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "../assert.ts";
import {
  CONFIG_ENV,
  emptyConfig,
  loadConfig,
  parseConfigText,
  removeCluster,
  resolveConfigPath,
  saveConfig,
  serversOf,
  upsertCluster,
  useCluster,
} from "../../cli/config_store.ts";

const env = (vars: Record<string, string>) => (n: string) => vars[n];

Deno.test("config path: --config > $OTHERIX_CONFIG > ~/.otherix/config", () => {
  const all = { [CONFIG_ENV]: "/env/config", HOME: "/home/u" };
  assertEquals(resolveConfigPath("/flag/config", env(all)), "/flag/config");
  assertEquals(resolveConfigPath(undefined, env(all)), "/env/config");
  assertEquals(resolveConfigPath(undefined, env({ HOME: "/home/u" })), "/home/u/.otherix/config");
  assertStringIncludes(assertThrows(() => resolveConfigPath(undefined, env({}))).message, "HOME");
});

Deno.test("config store: save creates 0700 dir and 0600 file, atomically, and round-trips", async () => {
  const root = await Deno.makeTempDir();
  try {
    const path = `${root}/.otherix/config`;
    let cfg = upsertCluster(emptyConfig(), {
      name: "prod",
      server: "http://a:8080",
      token: "otx_1",
    }, {
      replace: false,
      use: true,
    });
    cfg = upsertCluster(cfg, { name: "dev", server: "http://b:8080", token: "otx_2" }, {
      replace: false,
      use: false,
    });
    await saveConfig(path, cfg);
    assertEquals((await Deno.stat(`${root}/.otherix`)).mode! & 0o777, 0o700);
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    // Only the config itself: the temp file was renamed away.
    const names = [];
    for await (const e of Deno.readDir(`${root}/.otherix`)) names.push(e.name);
    assertEquals(names, ["config"]);

    const text = await Deno.readTextFile(path);
    assertStringIncludes(text, "apiVersion: otherix/v1");
    assertStringIncludes(text, "kind: Config");
    assertStringIncludes(text, "current-cluster: prod");
    const back = await loadConfig(path);
    assertEquals(back.clusters.map((c) => [c.name, c.server, c.token]), [
      ["prod", "http://a:8080", "otx_1"],
      ["dev", "http://b:8080", "otx_2"],
    ]);
    assertEquals(back["current-cluster"], "prod");

    // Rewrite (replace) keeps perms and still leaves no temp file.
    await saveConfig(path, useCluster(back, "dev", path));
    assertEquals((await loadConfig(path))["current-cluster"], "dev");
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    const after = [];
    for await (const e of Deno.readDir(`${root}/.otherix`)) after.push(e.name);
    assertEquals(after, ["config"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("config store: a missing file is an empty config; invalid files are reported", async () => {
  const root = await Deno.makeTempDir();
  try {
    assertEquals((await loadConfig(`${root}/nope`)).clusters, []);
    await Deno.writeTextFile(`${root}/bad`, "apiVersion: v0\nkind: Config\n");
    const err = await loadConfig(`${root}/bad`).then(() => null, (e) => e as Error);
    assertStringIncludes(err!.message, "apiVersion");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("config store: upsert refuses duplicates without replace; remove/use validate names", () => {
  const one = upsertCluster(emptyConfig(), { name: "a", server: "http://a", token: "t1" }, {
    replace: false,
    use: true,
  });
  assertStringIncludes(
    assertThrows(() =>
      upsertCluster(one, { name: "a", server: "http://x", token: "t2" }, {
        replace: false,
        use: true,
      })
    ).message,
    "already exists",
  );
  const replaced = upsertCluster(one, { name: "a", server: "http://x", token: "t2" }, {
    replace: true,
    use: true,
  });
  assertEquals(replaced.clusters, [{ name: "a", server: "http://x", token: "t2" }]);

  const removed = removeCluster(replaced, "a", "cfg");
  assertEquals(removed.clusters, []);
  assertEquals(removed["current-cluster"], undefined); // removing the current one clears it
  assertStringIncludes(assertThrows(() => removeCluster(removed, "a", "cfg")).message, "not found");
  assertStringIncludes(assertThrows(() => useCluster(removed, "zz", "cfg")).message, "not found");
});

Deno.test("config store: unknown keys survive a round-trip; duplicate names are rejected", async () => {
  const cfg = await parseConfigText(
    "apiVersion: otherix/v1\nkind: Config\nclusters:\n- {name: a, server: 'http://a', token: t, ca_fingerprint: 'sha256:x'}\nextra: 1\n",
    "cfg",
  );
  assert((cfg.clusters[0] as Record<string, unknown>).ca_fingerprint === "sha256:x");
  assertEquals((cfg as Record<string, unknown>).extra, 1);
  assertStringIncludes(
    (await assertRejects(() =>
      parseConfigText(
        "apiVersion: otherix/v1\nkind: Config\nclusters:\n- {name: a, server: s, token: t}\n- {name: a, server: s, token: t}\n",
        "cfg",
      )
    )).message,
    "defined twice",
  );
});

Deno.test("config store: a cluster's server may be a list; one URL is written as a string", async (t) => {
  const root = await Deno.makeTempDir();
  try {
    const path = `${root}/config`;
    await t.step("lists round-trip; a one-element list is written as a plain string", async () => {
      let cfg = upsertCluster(emptyConfig(), {
        name: "ha",
        server: ["http://a:8080", "http://b:8080"],
        token: "otx_1",
      }, { replace: false, use: true });
      cfg = upsertCluster(cfg, { name: "one", server: ["http://c:8080"], token: "otx_2" }, {
        replace: false,
        use: false,
      });
      await saveConfig(path, cfg);
      const text = await Deno.readTextFile(path);
      assertStringIncludes(text, "server:\n      - http://a:8080\n      - http://b:8080\n");
      assertStringIncludes(text, "server: http://c:8080\n");
      const back = await loadConfig(path);
      assertEquals(back.clusters.map(serversOf), [
        ["http://a:8080", "http://b:8080"],
        ["http://c:8080"],
      ]);
    });
    await t.step("an existing single-server file reads as before", async () => {
      const cfg = await parseConfigText(
        "apiVersion: otherix/v1\nkind: Config\nclusters:\n- {name: a, server: 'http://a', token: t}\n",
        "cfg",
      );
      assertEquals([cfg.clusters[0].server, serversOf(cfg.clusters[0])], ["http://a", [
        "http://a",
      ]]);
    });
    await t.step("bad server values are named", async () => {
      for (const server of ["[]", "['http://a', '']", "{url: x}", "''"]) {
        const e = await assertRejects(() =>
          parseConfigText(
            `apiVersion: otherix/v1\nkind: Config\nclusters:\n- {name: a, server: ${server}, token: t}\n`,
            "cfg",
          )
        );
        assertStringIncludes(
          e.message,
          "config cfg is invalid: clusters.0.server: expected a URL or a non-empty list of URLs",
        );
      }
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
