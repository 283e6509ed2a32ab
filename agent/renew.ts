/**
 * Agent certificate renewal over mTLS, without a join token (cp/nodes/certs.ts is the other
 * side): when 2/3 of the certificate's lifetime (`notBefore`..`notAfter`) has passed, the agent
 * generates a new key and a CSR for the same CN and SANs, sends it to
 * `POST {cp_url}/v1/nodes/renew` authenticated with its CURRENT certificate, checks the answer
 * (signed by the trusted CA, for the new key, same CN, O = AGENT_CERT_ORG), writes the new key
 * and certificate, then hands the new identity to `onRenewed` (agent/main.ts switches the
 * heartbeat and the report pusher to it). The control plane pins the new certificate as it
 * answers, so from then on only the new one is accepted. `cp_url` is the current URL of the
 * agent's control-plane list (agent/cp_endpoints.ts): a request that gets no answer is sent to
 * the next replica at once.
 *
 * Schedule: checked at start, then on a timer until the next due time (at most
 * `maxSleepMs` ahead, so a long-lived certificate is re-checked now and then and the clock may
 * jump); a failure is logged (`certificate renewal failed`) and retried after `retryMs`,
 * doubling up to `maxRetryMs`. Success logs `certificate renewed` with the new expiry.
 *
 * Files (cert dir, agent/bootstrap.ts `certFiles`): the new key and certificate are first
 * written atomically (agent/fsutil.ts writeFileAtomic) as `agent.key.next` (0600) and
 * `agent.crt.next` (0644), then renamed over `agent.key` and `agent.crt`, in that order. A
 * crash between the renames leaves a state that agent/bootstrap.ts completes on the next start
 * (`bootstrap: completed an interrupted certificate renewal`).
 *
 * @module
 */
import { rename } from "node:fs/promises";
import { RenewResponseSchema } from "../shared/api/nodes.ts";
import { AGENT_CERT_ORG } from "../shared/constants.ts";
import type { Logger } from "../shared/log.ts";
import { certInfo, createCsr, isSignedBy, keyMatchesCert, splitSans } from "../shared/pki.ts";
import { type AgentIdentity, certFiles } from "./bootstrap.ts";
import { cpTls, postToCpWithFailover } from "./cp_client.ts";
import type { CpEndpoints } from "./cp_endpoints.ts";
import { errorMessage, writeFileAtomic } from "./fsutil.ts";

/** Fraction of a certificate's lifetime after which it is renewed. */
export const RENEW_AT_FRACTION = 2 / 3;

/**
 * When the certificate `certPem` is due for renewal: `notBefore` + 2/3 of
 * (`notAfter` − `notBefore`).
 *
 * @throws when `certPem` is not a certificate
 */
export function renewalDueAt(certPem: string): { dueAt: Date; notAfter: Date } {
  const info = certInfo(certPem);
  const start = info.notBefore.getTime();
  const lifetime = info.notAfter.getTime() - start;
  return { dueAt: new Date(start + lifetime * RENEW_AT_FRACTION), notAfter: info.notAfter };
}

/**
 * Sends a renewal request: `(identity, csrPem, signal)` → the control plane's JSON answer.
 * @throws Error on transport failure or an error envelope
 */
export type RenewRequester = (
  identity: AgentIdentity,
  csrPem: string,
  signal: AbortSignal,
) => Promise<unknown>;

/**
 * The real requester: `POST {cp_url}/v1/nodes/renew` over mTLS with the current identity, to
 * the current URL of `endpoints` (the next replica when one does not answer).
 *
 * @param timeoutMs per-attempt timeout, ms
 */
export function mtlsRenewRequester(endpoints: CpEndpoints, timeoutMs = 15_000): RenewRequester {
  return async (identity, csrPem, signal) =>
    (await postToCpWithFailover(
      endpoints,
      "/v1/nodes/renew",
      { csr_pem: csrPem },
      cpTls(identity),
      {
        timeoutMs,
        component: "renewal",
        signal,
      },
    )).json;
}

/** Options of {@link startRenewer} and {@link renewOnce}. */
export interface RenewerOptions {
  /** The cert dir (`<state>/certs`). */
  certDir: string;
  /** The identity in use now (the renewer always renews the current one). */
  identity: () => AgentIdentity;
  /** Called with the new identity once its files are in place. */
  onRenewed: (next: AgentIdentity) => void | Promise<void>;
  /** Sends the request (default none: pass {@link mtlsRenewRequester}). */
  request: RenewRequester;
  log: Logger;
  /** Wall clock (default `new Date()`); tests inject one. */
  now?: () => Date;
  /** First retry delay after a failure, ms (default 60 000); doubles per failure. */
  retryMs?: number;
  /** Longest retry delay, ms (default 15 min). */
  maxRetryMs?: number;
  /** Longest sleep between two checks, ms (default 1 h). */
  maxSleepMs?: number;
}

/** A running renewer. */
export interface Renewer {
  /**
   * Renews now if the certificate is due (a check already in flight is joined).
   * @returns true when a renewal happened
   * @throws Error when a due renewal failed
   */
  check(): Promise<boolean>;
  /** Stops the timer; waits for a renewal in flight. */
  stop(): Promise<void>;
}

/**
 * Renews the current identity now, whether due or not.
 *
 * @returns the new identity (its files already written)
 * @throws Error when the request fails, the answer is invalid or not for our key/CA/name, or
 *   the files cannot be written (the current files are then unchanged)
 */
export async function renewOnce(
  o: Pick<RenewerOptions, "certDir" | "identity" | "request" | "log">,
  signal: AbortSignal = new AbortController().signal,
): Promise<AgentIdentity> {
  const cur = o.identity();
  const csr = await createCsr(cur.nodeName, splitSans(certInfo(cur.certPem).sans));
  const raw = await o.request(cur, csr.csrPem, signal);
  const parsed = RenewResponseSchema.safeParse(raw);
  if (!parsed.success) throw new Error("renewal: invalid response from the control plane");
  const certPem = parsed.data.certificate_pem;
  let info;
  try {
    info = certInfo(certPem);
  } catch (e) {
    throw new Error(`renewal: the returned certificate is unreadable: ${errorMessage(e)}`);
  }
  if (!(await isSignedBy(certPem, cur.caPem)) || !(await keyMatchesCert(csr.keyPem, certPem))) {
    throw new Error("renewal: the returned certificate is not signed by our CA or not for our key");
  }
  if (info.commonName !== cur.nodeName || info.organization !== AGENT_CERT_ORG) {
    throw new Error(
      `renewal: the returned certificate is CN=${info.commonName} O=${info.organization}, ` +
        `expected CN=${cur.nodeName} O=${AGENT_CERT_ORG}`,
    );
  }
  if (parsed.data.ca_pem.trim() !== cur.caPem.trim()) {
    o.log.warn("renewal: the control plane sent a different CA; keeping the trusted one");
  }
  const files = certFiles(o.certDir);
  await writeFileAtomic(files.nextKey, csr.keyPem, 0o600);
  await writeFileAtomic(files.nextCert, certPem, 0o644);
  await rename(files.nextKey, files.key);
  await rename(files.nextCert, files.cert);
  return { ...cur, certPem, keyPem: csr.keyPem, bootstrapped: false };
}

/** Starts renewing: checks at once, then on a timer (see the module doc). */
export function startRenewer(o: RenewerOptions): Renewer {
  const now = o.now ?? (() => new Date());
  const retryMs = o.retryMs ?? 60_000;
  const maxRetryMs = o.maxRetryMs ?? 15 * 60_000;
  const maxSleepMs = o.maxSleepMs ?? 3600_000;
  const ctrl = new AbortController();
  let inFlight: Promise<boolean> | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let failures = 0;

  const renewIfDue = async (): Promise<boolean> => {
    const { dueAt, notAfter } = renewalDueAt(o.identity().certPem);
    const t = now();
    if (t < dueAt) return false;
    if (t >= notAfter) {
      o.log.error("certificate expired; renewal will be refused (re-bootstrap with a join token)", {
        node: o.identity().nodeName,
        not_after: notAfter.toISOString(),
      });
    }
    const next = await renewOnce(o, ctrl.signal);
    const expiry = certInfo(next.certPem).notAfter.toISOString();
    o.log.info("certificate renewed", { node: next.nodeName, not_after: expiry });
    await o.onRenewed(next);
    return true;
  };

  const check = (): Promise<boolean> => {
    inFlight ??= renewIfDue().finally(() => inFlight = null);
    return inFlight;
  };

  const tick = async () => {
    timer = undefined;
    if (ctrl.signal.aborted) return;
    let delay: number;
    try {
      await check();
      failures = 0;
      delay = renewalDueAt(o.identity().certPem).dueAt.getTime() - now().getTime();
    } catch (e) {
      if (ctrl.signal.aborted) return;
      failures++;
      delay = Math.min(retryMs * 2 ** (failures - 1), maxRetryMs);
      o.log.warn("certificate renewal failed", {
        node: o.identity().nodeName,
        err: errorMessage(e),
        retry_in_ms: delay,
      });
    }
    if (ctrl.signal.aborted) return;
    timer = setTimeout(tick, Math.max(0, Math.min(delay, maxSleepMs)));
  };
  void tick();

  return {
    check,
    async stop() {
      ctrl.abort();
      clearTimeout(timer);
      await inFlight?.catch(() => {});
    },
  };
}
