/**
 * Credentials embedded in URLs (`http://user:pass@nas/img.qcow2`): every view, log line and
 * error message shows them as `***` (`http://***@nas/img.qcow2`); only the agent that
 * downloads uses them (agent/download.ts sends them as HTTP Basic authorization).
 *
 * @module
 */

/** What credentials are replaced with. */
export const REDACTED = "***";

/**
 * `scheme://userinfo@` anywhere in a text: up to the LAST `@` before the authority ends (`/`,
 * `?`, `#`, whitespace), as the URL parser splits `http://u:p@ss@host`.
 */
const USERINFO_IN_TEXT = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#"'<>]+@/gi;

/** True when `url` carries a user name or password. */
export function hasCredentials(url: string): boolean {
  try {
    const u = new URL(url);
    return u.username !== "" || u.password !== "";
  } catch {
    return false;
  }
}

/**
 * `url` with its user name and password replaced by `***` (unchanged when it has none); text
 * that is not a URL is returned through {@link redactText}.
 */
export function redactUrl(url: string): string {
  return redactText(url);
}

/**
 * `text` with the userinfo of every `scheme://user:pass@host` in it replaced by `***`
 * (error messages and log fields that quote a URL).
 */
export function redactText(text: string): string {
  return text.replace(USERINFO_IN_TEXT, `$1${REDACTED}@`);
}

/**
 * Splits the credentials off `url`: the URL without them and the `Authorization` header
 * value they stand for (`Basic base64(user:pass)`, percent-decoded; null when none).
 *
 * @throws TypeError when `url` is not a URL
 */
export function splitCredentials(url: string): { url: string; authorization: string | null } {
  const u = new URL(url);
  if (u.username === "" && u.password === "") return { url, authorization: null };
  const user = decodeURIComponent(u.username);
  const pass = decodeURIComponent(u.password);
  u.username = "";
  u.password = "";
  const bytes = new TextEncoder().encode(`${user}:${pass}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return { url: u.toString(), authorization: `Basic ${btoa(bin)}` };
}
