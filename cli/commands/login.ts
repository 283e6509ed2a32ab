/**
 * `otherix login --oidc --server URL [--name N] [--force] [--no-use] [--timeout 5m]`: signs in
 * through the cluster's OIDC issuer (config `auth.oidc` on the control plane) and stores a
 * long-lived API token as `config add cluster` does.
 *
 * The authorization-code flow with PKCE (RFC 7636) and a loopback redirect (RFC 8252 §7.3,
 * `http://127.0.0.1:<port>/callback`, a port picked per sign-in), through npm `openid-client`:
 *
 * 1. `GET /v1/auth/oidc` on the server: the issuer, the client id, the scopes;
 * 2. the issuer's discovery document; a code verifier, `state` and `nonce`;
 * 3. the authorization URL is printed on stderr (open it in a browser on this machine); the
 *    CLI waits for the redirect on the loopback address (at most `--timeout`);
 * 4. the code is exchanged for tokens (state, PKCE and nonce checked); the ID token goes to
 *    `POST /v1/auth/oidc/login` with the issuer's access token (the control plane reads
 *    userinfo with it when the ID token lacks a claim), which answers an access token (the
 *    user is created on first sign-in with the mapped role);
 * 5. an API token is minted with it and stored under `--name` (default: the server's host).
 *
 * A plain-HTTP issuer is accepted only on a loopback address (tests, a local IdP).
 *
 * @module
 */
import type { Command } from "commander";
import * as oidc from "openid-client";
import { LoginResponseSchema, UserSchema } from "../../shared/api/auth.ts";
import { OidcConfigSchema } from "../../shared/api/oidc.ts";
import { ApiClient } from "../client.ts";
import { globalsOf, parseDurationArg } from "../common.ts";
import { clusterNameProblem, findCluster, loadConfig, resolveConfigPath } from "../config_store.ts";
import { UsageError } from "../errors.ts";
import type { Io } from "../io.ts";
import { parseEndpoints } from "../endpoints.ts";
import { SERVER_ENV } from "../resolve.ts";
import { storeCluster } from "./config.ts";

/** How long `login --oidc` waits for the browser's redirect by default, seconds. */
export const DEFAULT_LOGIN_TIMEOUT_SECONDS = 300;

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

/** The page the browser lands on after the redirect. */
const DONE_PAGE = "<!doctype html><title>otherix</title><p>Signed in. You can close this tab.</p>";

/**
 * Waits for one authorization response on `http://127.0.0.1:<port>/callback`; resolves with
 * its full URL. The server stops after it (or at `signal`).
 */
function loopbackRedirect(signal: AbortSignal): { uri: string; done: Promise<URL> } {
  let resolve!: (u: URL) => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<URL>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const url = new URL(req.url);
      if (url.pathname !== "/callback") return new Response("not found", { status: 404 });
      resolve(url);
      return new Response(DONE_PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    },
  );
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    server.shutdown().catch(() => {}); // graceful: the page is still delivered
  };
  signal.addEventListener("abort", () => {
    reject(signal.reason);
    stop();
  }, { once: true });
  done.then(stop, stop);
  return { uri: `http://127.0.0.1:${server.addr.port}/callback`, done };
}

/** Registers `login` on `program`. */
export function registerLoginCommand(program: Command, io: Io): void {
  program.command("login")
    .description("sign in through the cluster's OIDC issuer and store an API token for it")
    .option("--oidc", "sign in with OIDC (authorization code + PKCE, loopback redirect)")
    .option(
      "--server <url>",
      `API server URL, or several comma-separated (replicas, tried in order; or $${SERVER_ENV})`,
    )
    .option("--name <name>", "name of the cluster entry (default: the server's host name)")
    .option("--force", "replace an existing entry with the same name")
    .option("--no-use", "do not make it the current cluster")
    .option(
      "--timeout <duration>",
      "how long to wait for the browser (default 5m)",
      parseDurationArg,
    )
    .action(async (opts, cmd: Command) => {
      if (!opts.oidc) {
        throw new UsageError(
          "login needs --oidc (password logins: 'otherix config add cluster --login …')",
        );
      }
      const serverArg = opts.server ?? io.env(SERVER_ENV);
      if (!serverArg) throw new UsageError(`missing --server (or $${SERVER_ENV})`);
      const endpoints = parseEndpoints(serverArg);
      const name: string = opts.name ??
        new URL(endpoints[0]).hostname.replace(/[^a-z0-9-]+/gi, "-");
      const problem = clusterNameProblem(name);
      if (problem) throw new UsageError(`invalid --name "${name}": ${problem}`);
      const path = resolveConfigPath(globalsOf(cmd).config, (n) => io.env(n));
      let cfg = await loadConfig(path);
      if (findCluster(cfg, name) && !opts.force) {
        throw new UsageError(
          `cluster "${name}" already exists in ${path} (use --force to replace it)`,
        );
      }
      const api = new ApiClient({
        endpoint: endpoints,
        timeoutMs: globalsOf(cmd).requestTimeout * 1000,
        fetch: io.fetch,
      });
      const settings = (await api.json("GET", "/v1/auth/oidc", OidcConfigSchema)).data;
      const issuer = new URL(settings.issuer);
      const insecure = issuer.protocol === "http:" && LOOPBACK.has(issuer.hostname);
      const client = await oidc.discovery(
        issuer,
        settings.client_id,
        undefined,
        oidc.None(),
        insecure ? { execute: [oidc.allowInsecureRequests] } : undefined,
      );
      const verifier = oidc.randomPKCECodeVerifier();
      const state = oidc.randomState();
      const nonce = oidc.randomNonce();
      const stop = new AbortController();
      const timeout = setTimeout(
        () => stop.abort(new UsageError("no sign-in arrived in time (--timeout)")),
        (opts.timeout ?? DEFAULT_LOGIN_TIMEOUT_SECONDS) * 1000,
      );
      const cancelOnInterrupt = io.onInterrupt(() => stop.abort(new UsageError("interrupted")));
      let callback: URL;
      let redirectUri: string;
      try {
        const redirect = loopbackRedirect(stop.signal);
        redirectUri = redirect.uri;
        const url = oidc.buildAuthorizationUrl(client, {
          redirect_uri: redirectUri,
          scope: settings.scopes.join(" "),
          code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
          code_challenge_method: "S256",
          state,
          nonce,
        });
        io.err(`Open this URL in a browser on this machine to sign in:\n\n  ${url.href}\n\n`);
        io.err(`Waiting for the sign-in (redirect to ${redirectUri}) …\n`);
        callback = await redirect.done;
      } finally {
        clearTimeout(timeout);
        cancelOnInterrupt();
        stop.abort();
      }
      const error = callback.searchParams.get("error");
      if (error) {
        throw new UsageError(
          `sign-in refused by the issuer: ${error}` +
            (callback.searchParams.get("error_description")
              ? ` (${callback.searchParams.get("error_description")})`
              : ""),
        );
      }
      const tokens = await oidc.authorizationCodeGrant(client, callback, {
        pkceCodeVerifier: verifier,
        expectedState: state,
        expectedNonce: nonce,
        idTokenExpected: true,
      });
      const session = await api.json("POST", "/v1/auth/oidc/login", LoginResponseSchema, {
        body: { id_token: tokens.id_token, nonce, access_token: tokens.access_token },
      });
      const me = await api.json("GET", "/v1/users/me", UserSchema, {
        token: session.data.access_token,
      });
      cfg = await storeCluster(api, io, path, cfg, {
        name,
        endpoints,
        accessToken: session.data.access_token,
        description: `otherix CLI (OIDC), cluster ${name}`,
        use: opts.use !== false,
      });
      const current = cfg["current-cluster"] === name;
      io.out(
        `logged in: ${me.data.email} (${me.data.role})\n` +
          `cluster added: name=${name} server=${endpoints.join(",")}` +
          ` current=${current}\n`,
      );
    });
}
