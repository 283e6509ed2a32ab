/**
 * OIDC sign-on with an issuer that keeps the email and the groups out of the ID token and in
 * its userinfo response (as Authentik, Keycloak for some scopes, or Google for groups do): a
 * real `oidc-provider` in that mode, `otherix login --oidc` in-process, headless Chromium as
 * the user. The control plane reads userinfo with the access token the CLI sends along, and
 * only when it is about the ID token's subject (OIDC Core 5.3.2).
 */
import { assertEquals, assertStringIncludes } from "../assert.ts";
import { startControlPlane } from "../../cp/app.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { getUserByEmail } from "../../cp/users/service.ts";
import { LogCapture } from "./fixtures.ts";
import {
  type Accounts,
  launchBrowser,
  type OidcLoginBody,
  signIn as signInAs,
  startProvider,
} from "./oidc_fixtures.ts";

const ACCOUNTS: Accounts = {
  alice: { groups: ["family"] },
  root: { groups: ["family", "homelab-admins"] },
};

Deno.test({
  name: "oidc: email and role from userinfo when the ID token lacks them, for its subject only",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const idp = await startProvider(ACCOUNTS, { claimsInIdToken: false });
    const dir = await Deno.makeTempDir({ prefix: "otx-oidcui-" });
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
    const signIn = (who: string, name: string, rewrite?: (b: OidcLoginBody) => OidcLoginBody) =>
      signInAs({ browser, server, home: dir, who, name, rewrite });
    /** `POST /v1/auth/oidc/login` with `body` as is. */
    const login = async (body: OidcLoginBody) => {
      const res = await fetch(`${server}/v1/auth/oidc/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const json = await res.json();
      return { status: res.status, code: json.error?.code, message: json.error?.message };
    };
    const user = (who: string) => getUserByEmail(cp.ctx.store, `${who}@example.com`);
    let alice: OidcLoginBody | null = null;
    try {
      await t.step("the ID token has neither: the user is made from userinfo", async () => {
        const r = await signIn("alice", "home");
        assertEquals(r.code, 0, r.stderr);
        assertStringIncludes(r.stdout, "logged in: alice@example.com (developer)\n");
        alice = r.sent!;
        // The provider really kept them out of the ID token.
        const claims = JSON.parse(atob(
          alice.id_token.split(".")[1].replace(/-/g, "+")
            .replace(/_/g, "/"),
        ));
        assertEquals([claims.sub, claims.email, claims.groups], ["alice", undefined, undefined]);
        assertEquals((await user("alice"))?.role, "developer");
      });

      await t.step("another subject's access token is 401 and creates no user", async () => {
        const r = await signIn(
          "root",
          "root",
          (b) => ({ ...b, access_token: alice!.access_token }),
        );
        assertEquals(r.code, 1);
        assertStringIncludes(
          r.stderr,
          "api_error: unauthenticated: the userinfo response is about another subject than the " +
            "ID token",
        );
        assertEquals(await user("root"), null);
        const root = r.sent!;

        // Without an access token nothing but the ID token counts (an older CLI).
        const bare = await login({ id_token: root.id_token, nonce: root.nonce });
        assertEquals([bare.status, bare.code, bare.message], [
          403,
          "permission_denied",
          'the ID token has no email in claim "email"',
        ]);
        // An access token the issuer does not know.
        const garbage = await login({ ...root, access_token: "not-a-token" });
        assertEquals([garbage.status, garbage.code], [401, "unauthenticated"]);
        assertStringIncludes(garbage.message, "the issuer refused the access token");
        assertEquals(await user("root"), null);

        // Root's own access token: root is made, with the most powerful mapped group.
        assertEquals((await login(root)).status, 200);
        assertEquals((await user("root"))?.role, "admin");
      });
    } finally {
      await browser.close();
      await cp.stop();
      await idp.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
