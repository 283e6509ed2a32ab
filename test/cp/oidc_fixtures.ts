/**
 * OIDC test fixtures: a real OpenID provider (npm `oidc-provider`, the certified
 * implementation) on loopback, headless Chromium playing the user at its login and consent
 * pages, and `otherix login --oidc` run in-process with a `fetch` that can see and rewrite
 * what the CLI sends to `POST /v1/auth/oidc/login`.
 *
 * @module
 */
import { assert, assertStringIncludes } from "../assert.ts";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import Provider from "oidc-provider";
import { type Browser, chromium } from "playwright-core";
import { run } from "../../cli/main.ts";
import { fakeIo } from "../cli/fixtures.ts";

/** The provider's people by account id (= `sub`): their groups decide their Otherix role. */
export type Accounts = Record<string, { groups: string[] }>;

/** A running provider. */
export interface TestProvider {
  /** Its issuer URL, `http://127.0.0.1:<port>`. */
  issuer: string;
  close(): Promise<void>;
}

/**
 * Starts a provider with one public client `otherix-cli` (PKCE required, loopback redirect)
 * whose accounts have `sub`, `email`, `email_verified` (true) and `groups` claims.
 * `claimsInIdToken` true puts the scopes' claims in the ID token too (oidc-provider's
 * `conformIdTokenClaims: false`); false keeps them in the userinfo response only, as OIDC Core
 * 5.4 has it for the code flow (the ID token then carries `sub` and no email or groups).
 */
export async function startProvider(
  accounts: Accounts,
  opts: { claimsInIdToken: boolean },
): Promise<TestProvider> {
  let handle: (req: IncomingMessage, res: ServerResponse) => void = () => {};
  const server = createServer((req, res) => handle(req, res));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: "otherix-cli",
      application_type: "native",
      token_endpoint_auth_method: "none",
      redirect_uris: ["http://127.0.0.1/callback"],
      grant_types: ["authorization_code"],
      response_types: ["code"],
    }],
    claims: { openid: ["sub"], email: ["email", "email_verified"], groups: ["groups"] },
    scopes: ["openid", "email", "groups"],
    conformIdTokenClaims: !opts.claimsInIdToken,
    pkce: { required: () => true },
    cookies: { keys: ["oidc-test-cookie-key"] },
    findAccount: (_ctx: unknown, id: string) =>
      accounts[id]
        ? {
          accountId: id,
          claims: () => ({
            sub: id,
            email: `${id}@example.com`,
            email_verified: true,
            groups: accounts[id].groups,
          }),
        }
        : undefined,
  });
  handle = provider.callback();
  return { issuer, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** Headless Chromium (Debian's). */
export async function launchBrowser(): Promise<Browser> {
  return await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
}

/** What `login --oidc` sends to `POST /v1/auth/oidc/login`. */
export type OidcLoginBody = { id_token: string; nonce: string; access_token?: string };

/** A `login --oidc` run. */
export interface SignInResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The authorization URL the CLI printed. */
  url: string;
  /** The login body as the CLI made it (before any rewrite); null when none was sent. */
  sent: OidcLoginBody | null;
}

/**
 * Runs `otherix login --oidc --server <server> --name <name>` with `HOME=<home>`, signing in
 * at the provider as `who` in a new page of `browser`. `rewrite` changes the login body on its
 * way to the control plane (the CLI's other requests pass untouched).
 */
export async function signIn(o: {
  browser: Browser;
  server: string;
  home: string;
  who: string;
  name: string;
  rewrite?: (body: OidcLoginBody) => OidcLoginBody;
}): Promise<SignInResult> {
  let sent: OidcLoginBody | null = null;
  const io = fakeIo({
    env: { HOME: o.home },
    fetch: async (input, init) => {
      const req = new Request(input, init);
      if (req.method !== "POST" || !req.url.endsWith("/v1/auth/oidc/login")) {
        return await fetch(req);
      }
      sent = JSON.parse(await req.text()) as OidcLoginBody;
      const body = JSON.stringify(o.rewrite ? o.rewrite(structuredClone(sent)) : sent);
      return await fetch(req.url, { method: "POST", headers: req.headers, body });
    },
  });
  const cli = run(["login", "--oidc", "--server", o.server, "--name", o.name], io);
  let url = "";
  for (let i = 0; i < 400 && !url; i++) {
    url = io.stderr.match(/^\s+(http\S+\/auth\?\S+)$/m)?.[1] ?? "";
    if (!url) await new Promise((r) => setTimeout(r, 25));
  }
  assert(url, `no authorization URL printed: ${io.stderr}`);
  const page = await o.browser.newPage();
  try {
    await page.goto(url);
    await page.fill('input[name="login"]', o.who);
    await page.fill('input[name="password"]', "any");
    await page.click('button[type="submit"]');
    await page.waitForSelector('button[type="submit"]'); // the consent page
    await page.click('button[type="submit"]');
    await page.waitForURL(/127\.0\.0\.1:\d+\/callback/);
    if (new URL(page.url()).searchParams.get("code")) {
      assertStringIncludes(await page.content(), "Signed in");
    }
  } finally {
    await page.close();
  }
  const code = await cli;
  return { code, stdout: io.stdout, stderr: io.stderr, url, sent };
}
