/**
 * The image-fetch policy `images.url_policy`: which addresses an image URL may make a node
 * fetch from. ONE rule module used by both sides:
 *
 * - the control plane checks the URL at `vm create` ({@link urlPolicyProblem}): IP literals in
 *   every form and the `localhost` names (RFC 6761) — it does not resolve DNS, whose answer
 *   on the node may differ;
 * - the agent checks every address it connects to, after its own DNS resolution and once per
 *   connection, redirects included ({@link addressProblem}, agent/fetch_policy.ts), so a name
 *   that resolves differently the second time (DNS rebinding) still meets the rule.
 *
 * Address classes (IANA special-purpose registries, through npm `ipaddr.js`):
 *
 * | class | ranges | default |
 * | --- | --- | --- |
 * | `loopback` | 127.0.0.0/8, ::1, and the unspecified 0.0.0.0/8 and :: (which reach the host) | denied |
 * | `link_local` | 169.254.0.0/16 (cloud metadata at .169.254), fe80::/10 | denied |
 * | `private` | 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7, fec0::/10 | allowed (a NAS on the LAN) |
 * | `public` | every other unicast address | allowed |
 * | `special` | multicast, broadcast, documentation, benchmarking, 240/4, Teredo, … | always denied |
 *
 * IPv6 forms that embed an IPv4 address (`::ffff:a.b.c.d` mapped, `::a.b.c.d` compatible,
 * `64:ff9b::/96` NAT64, `2002::/16` 6to4) are judged by the embedded IPv4 address, and IPv4
 * literals are normalised by the WHATWG URL parser (the one `fetch` uses), so `0x7f000001`,
 * `2130706433`, `017700000001`, `127.1` and `127.0.0.1.` are all `127.0.0.1`.
 *
 * @module
 */
import ipaddr from "ipaddr.js";
import { z } from "zod";

/** Where a policy refusal comes from (config key), for messages. */
export const URL_POLICY_KEY = "images.url_policy";

/** `images.url_policy` (control plane and agent config; the same keys and defaults). */
export const UrlPolicySchema = z.object({
  /** Allow 127.0.0.0/8, ::1 and the unspecified addresses (tests and the demo opt in). */
  allow_loopback: z.boolean().default(false),
  /** Allow 169.254.0.0/16 and fe80::/10 (cloud metadata endpoints live there). */
  allow_link_local: z.boolean().default(false),
  /** Allow RFC 1918, CGNAT and unique-local addresses (default true: a NAS on the LAN). */
  allow_private: z.boolean().default(true),
  /** Extra CIDRs always refused, e.g. `["10.0.0.0/24"]` (checked after the classes). */
  deny_cidrs: z.array(
    z.string().refine((s) => cidrOf(s) !== null, "must be a CIDR like 10.0.0.0/8 or fd00::/8"),
  ).default([]),
}).strict();
/** A validated URL policy. */
export type UrlPolicy = z.infer<typeof UrlPolicySchema>;

/** The default policy: loopback and link-local denied, private and public allowed. */
export const DEFAULT_URL_POLICY: UrlPolicy = UrlPolicySchema.parse({});

/** The class of an address (see the module table). */
export type AddressClass = "loopback" | "link_local" | "private" | "public" | "special";

type Parsed = ipaddr.IPv4 | ipaddr.IPv6;

function cidrOf(s: string): [Parsed, number] | null {
  try {
    return ipaddr.parseCIDR(s) as [Parsed, number];
  } catch {
    return null;
  }
}

/** The IPv4 address embedded in an IPv6 one (mapped, compatible, NAT64, 6to4), or null. */
function embeddedV4(a: ipaddr.IPv6): ipaddr.IPv4 | null {
  const p = a.parts;
  const v4 = (hi: number, lo: number) => new ipaddr.IPv4([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff]);
  const range = a.range();
  if (range === "ipv4Mapped" || range === "rfc6145") return v4(p[6], p[7]);
  if (range === "rfc6052") return v4(p[6], p[7]);
  if (range === "6to4") return v4(p[1], p[2]);
  // IPv4-compatible (::a.b.c.d, deprecated) — not :: or ::1, which are their own classes.
  if (p.slice(0, 6).every((x) => x === 0) && (p[6] !== 0 || p[7] > 1)) return v4(p[6], p[7]);
  return null;
}

function classOfV4(a: ipaddr.IPv4): AddressClass {
  switch (a.range()) {
    case "loopback":
    case "unspecified":
      return "loopback";
    case "linkLocal":
      return "link_local";
    case "private":
    case "carrierGradeNat":
      return "private";
    case "unicast":
      return "public";
    default:
      return "special";
  }
}

/** Parses an address (IPv4 in the four-part decimal form, IPv6 with or without brackets). */
function parseAddress(ip: string): Parsed | null {
  const bare = ip.replace(/^\[|\]$/g, "");
  if (!ipaddr.isValid(bare)) return null;
  // Only the canonical IPv4 form here: other forms are normalised by the URL parser first.
  if (!bare.includes(":") && !ipaddr.IPv4.isValidFourPartDecimal(bare)) return null;
  return ipaddr.parse(bare) as Parsed;
}

/**
 * The class of the address `ip` (`127.0.0.1`, `::1`, `[::ffff:7f00:1]`).
 *
 * @throws TypeError when `ip` is not an IPv4 (four-part decimal) or IPv6 address
 */
export function classifyAddress(ip: string): AddressClass {
  const a = parseAddress(ip);
  if (!a) throw new TypeError(`not an IP address: ${ip}`);
  if (a.kind() === "ipv4") return classOfV4(a as ipaddr.IPv4);
  const v6 = a as ipaddr.IPv6;
  const inner = embeddedV4(v6);
  if (inner) return classOfV4(inner);
  switch (v6.range() as string) {
    case "loopback":
    case "unspecified":
      return "loopback";
    case "linkLocal":
      return "link_local";
    case "uniqueLocal":
    case "deprecatedSiteLocal":
      return "private";
    case "unicast":
      return "public";
    default:
      return "special";
  }
}

/** The config key that would allow a class (null: never allowed). */
function allowKeyOf(cls: AddressClass): keyof UrlPolicy | null {
  return cls === "loopback"
    ? "allow_loopback"
    : cls === "link_local"
    ? "allow_link_local"
    : cls === "private"
    ? "allow_private"
    : null;
}

/**
 * Why `policy` refuses connecting to `ip`, or null when it allows it. The message names the
 * address class and the config key, never a port or whether anything listens there.
 *
 * @throws TypeError when `ip` is not an IP address
 */
export function addressProblem(ip: string, policy: UrlPolicy): string | null {
  const cls = classifyAddress(ip);
  if (cls === "special") {
    return `address ${ip} is a special-purpose address (never fetched from)`;
  }
  const key = allowKeyOf(cls);
  if (key && policy[key] === false) {
    return `address ${ip} is ${cls.replace("_", "-")}, refused by ${URL_POLICY_KEY} ` +
      `(set ${URL_POLICY_KEY}.${key}: true to allow it)`;
  }
  const a = parseAddress(ip)!;
  for (const s of policy.deny_cidrs) {
    const [net, bits] = cidrOf(s)!;
    const probe = a.kind() === "ipv6" && embeddedV4(a as ipaddr.IPv6) && net.kind() === "ipv4"
      ? embeddedV4(a as ipaddr.IPv6)!
      : a;
    if (probe.kind() === net.kind() && probe.match(net, bits)) {
      return `address ${ip} is in ${s}, refused by ${URL_POLICY_KEY}.deny_cidrs`;
    }
  }
  return null;
}

/**
 * The host of `url` as the URL parser (and so `fetch`) normalises it: IPv4 literals in any
 * form become dotted decimal, IPv6 literals lose their brackets and are compressed; names
 * are lowercased without a trailing dot. `ip` tells whether it is an address literal.
 *
 * @throws TypeError when `url` is not a URL
 */
export function hostOf(url: string): { host: string; ip: boolean } {
  const hostname = new URL(url).hostname;
  if (hostname.startsWith("[")) return { host: hostname.slice(1, -1), ip: true };
  if (parseAddress(hostname)) return { host: hostname, ip: true };
  return { host: hostname.replace(/\.$/, ""), ip: false };
}

/** True for `localhost` and names under `.localhost` (RFC 6761: always loopback). */
export function isLocalhostName(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return h === "localhost" || h.endsWith(".localhost");
}

/**
 * The control plane's check at `vm create`: why `policy` refuses `url`, or null. Judges IP
 * literals (every form) and `localhost` names; other names are judged by the agent after it
 * resolves them.
 */
export function urlPolicyProblem(url: string, policy: UrlPolicy): string | null {
  let h: { host: string; ip: boolean };
  try {
    h = hostOf(url);
  } catch {
    return null; // not a URL: the URL schema reports that
  }
  if (h.ip) return addressProblem(h.host, policy);
  if (isLocalhostName(h.host) && !policy.allow_loopback) {
    return `host ${h.host} is loopback, refused by ${URL_POLICY_KEY} ` +
      `(set ${URL_POLICY_KEY}.allow_loopback: true to allow it)`;
  }
  return null;
}
