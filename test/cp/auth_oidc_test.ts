/**
 * OIDC sign-on end to end against a real OpenID provider (npm `oidc-provider`, the certified
 * implementation, started here on loopback): `otherix login --oidc` runs the authorization
 * code flow with PKCE through its loopback redirect while headless Chromium plays the user at
 * the provider's login and consent pages; the control plane verifies the ID token, creates
 * the user on first sign-in with the mapped role, and the CLI stores an API token. Users no
 * mapping covers, forged tokens and ID tokens with another nonce are refused. (Claims found
 * only in the userinfo response: auth_oidc_userinfo_test.ts.)
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { SignJWT } from "jose";
import { run } from "../../cli/main.ts";
import { loadConfig } from "../../cli/config_store.ts";
import { startControlPlane } from "../../cp/app.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { getUserByEmail } from "../../cp/users/service.ts";
import { fakeIo } from "../cli/fixtures.ts";
import { LogCapture } from "./fixtures.ts";
import {
  type Accounts,
  launchBrowser,
  type OidcLoginBody,
  signIn as signInAs,
  startProvider,
} from "./oidc_fixtures.ts";

/** The provider's people: their groups decide their Otherix role. */
const ACCOUNTS: Accounts = {
  alice: { groups: ["family"] },
  bob: { groups: ["family"] },
  root: { groups: ["family", "homelab-admins"] },
  mallory: { groups: ["strangers"] },
};

Deno.test({
  name: "oidc: login --oidc through a real provider, users created with their mapped role",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const idp = await startProvider(ACCOUNTS, { claimsInIdToken: true });
    const dir = await Deno.makeTempDir({ prefix: "otx-oidc-" });
    const cfg = parseApiConfig(
      `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n` +
        `store:\n  data_dir: ${dir}/data\nworkers:\n  enabled: false\n` +
        `auth:\n  oidc:\n    issuer: ${idp.issuer}\n    client_id: otherix-cli\n` +
        `    scopes: [openid, email, groups]\n` +
        `    role_mapping: {family: developer, homelab-admins: admin}\n`,
    );
    const cp = await startControlPlane(cfg, new LogCapture().logger(), {
      host: { hostname: "localhost", addresses: [] },
      getEnv: () => undefined,
    });
    const server = `http://127.0.0.1:${cp.publicPort}`;
    const browser = await launchBrowser();
    /** Runs `login --oidc`, signing in at the provider as `who`. */
    const signIn = (who: string, name: string, rewrite?: (b: OidcLoginBody) => OidcLoginBody) =>
      signInAs({ browser, server, home: dir, who, name, rewrite });
    try {
      await t.step(
        "first sign-in creates the user with the mapped role; a token is stored",
        async () => {
          const r = await signIn("alice", "home");
          assertEquals(r.code, 0, r.stderr);
          assertEquals(
            r.stdout,
            `logged in: alice@example.com (developer)\n` +
              `cluster added: name=home server=${server} current=true\n`,
          );
          // PKCE S256 and the loopback redirect were in the request.
          const auth = new URL(r.url);
          assertEquals(auth.searchParams.get("code_challenge_method"), "S256");
          assertMatch(
            auth.searchParams.get("redirect_uri")!,
            /^http:\/\/127\.0\.0\.1:\d+\/callback$/,
          );
          const entry = (await loadConfig(`${dir}/.otherix/config`)).clusters[0];
          assert(entry.token.startsWith("otx_"));
          const who = fakeIo({ env: { HOME: dir } });
          assertEquals(await run(["whoami"], who), 0, who.stderr);
          assertStringIncludes(who.stdout, "email: alice@example.com\nrole: developer\n");
          assertEquals(
            (await getUserByEmail(cp.ctx.store, "alice@example.com"))!.role,
            "developer",
          );
        },
      );

      await t.step(
        "the most powerful mapped group wins; a second sign-in reuses the user",
        async () => {
          const r = await signIn("root", "home-root");
          assertEquals(r.code, 0, r.stderr);
          assertStringIncludes(r.stdout, "logged in: root@example.com (admin)\n");
          const again = await signIn("alice", "home-again");
          assertStringIncludes(again.stdout, "logged in: alice@example.com (developer)\n");
        },
      );

      await t.step("a user no mapping covers is refused and not created", async () => {
        const r = await signIn("mallory", "nope");
        assertEquals(r.code, 1);
        assertMatch(r.stderr, /api_error: permission_denied: no role for mallory@example.com/);
        assertEquals(await getUserByEmail(cp.ctx.store, "mallory@example.com"), null);
      });

      await t.step("an ID token with another nonce is 401 and creates no user", async () => {
        const r = await signIn("bob", "bob", (body) => ({ ...body, nonce: "another-nonce" }));
        assertEquals(r.code, 1);
        assertStringIncludes(r.stderr, "api_error: unauthenticated: invalid ID token nonce");
        assertEquals(await getUserByEmail(cp.ctx.store, "bob@example.com"), null);
        // The same ID token with its own nonce signs bob in: only the nonce was wrong.
        const res = await fetch(`${server}/v1/auth/oidc/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(r.sent),
        });
        assertEquals(res.status, 200, await res.text());
        assertEquals((await getUserByEmail(cp.ctx.store, "bob@example.com"))?.role, "developer");
      });

      await t.step("a forged ID token is 401; the sign-on settings are public", async () => {
        const forged = await new SignJWT({
          email: "eve@example.com",
          nonce: "n",
          groups: ["homelab-admins"],
        })
          .setProtectedHeader({ alg: "HS256" })
          .setIssuer(idp.issuer)
          .setAudience("otherix-cli")
          .setSubject("eve")
          .setIssuedAt()
          .setExpirationTime("5m")
          .sign(crypto.getRandomValues(new Uint8Array(32)));
        const res = await fetch(`${server}/v1/auth/oidc/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ id_token: forged, nonce: "n" }),
        });
        assertEquals([res.status, (await res.json()).error.message], [401, "invalid ID token"]);
        assertEquals(await getUserByEmail(cp.ctx.store, "eve@example.com"), null);
        const conf = await (await fetch(`${server}/v1/auth/oidc`)).json();
        assertEquals(conf, {
          issuer: idp.issuer,
          client_id: "otherix-cli",
          scopes: ["openid", "email", "groups"],
        });
      });
    } finally {
      await browser.close();
      await cp.stop();
      await idp.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
