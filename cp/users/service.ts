/**
 * Users: creation (email unique, case-insensitive), lookup (by id or email), role changes,
 * password resets and changes, deletion (with the user's API tokens), API-token revocation,
 * login, and the first-boot admin from `OTHERIX_BOOTSTRAP_ADMIN_EMAIL` /
 * `OTHERIX_BOOTSTRAP_ADMIN_PASSWORD` (spec: "Setup", step 3).
 *
 * The last admin can be neither demoted nor deleted: such a change is one transaction that
 * compares every admin's record, so two concurrent changes cannot both remove "the other"
 * admin (409 `conflict`).
 *
 * @module
 */
import { z } from "zod";
import { ApiError } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import type { Role } from "../../shared/rbac.ts";
import type { User } from "../../shared/api/auth.ts";
import { dummyHash, hashPassword, verifyPassword } from "../auth/passwords.ts";
import { type ApiTokenRecord, keys, type UserRecord } from "../repo/records.ts";
import { type Compare, type Op, rangeAll, type Store } from "../store/store.ts";

/** Env var naming the first-boot admin's email. */
export const BOOTSTRAP_EMAIL_ENV = "OTHERIX_BOOTSTRAP_ADMIN_EMAIL";
/** Env var holding the first-boot admin's password. */
export const BOOTSTRAP_PASSWORD_ENV = "OTHERIX_BOOTSTRAP_ADMIN_PASSWORD";

/** Public view of a user. */
export function userView(u: UserRecord): User {
  return { id: u.id, email: u.email, role: u.role, created_at: u.created_at };
}

/** Reads a user by id; null when absent. */
export async function getUser(store: Store, id: string): Promise<UserRecord | null> {
  return (await store.get<UserRecord>(keys.user(id)))?.value ?? null;
}

/** Reads a user by email (case-insensitive); null when absent. */
export async function getUserByEmail(store: Store, email: string): Promise<UserRecord | null> {
  const idx = await store.get<{ id: string }>(keys.userByEmail(email));
  return idx ? await getUser(store, idx.value.id) : null;
}

/**
 * Creates a user with a hashed password.
 *
 * @throws ApiError `conflict` when the email is taken
 */
export async function createUser(
  store: Store,
  input: { email: string; password: string; role: Role },
  now: Date = new Date(),
): Promise<UserRecord> {
  const user: UserRecord = {
    id: crypto.randomUUID(),
    email: input.email,
    role: input.role,
    password_hash: await hashPassword(input.password),
    created_at: now.toISOString(),
  };
  const res = await store.txn({
    compare: [{ key: keys.userByEmail(input.email), absent: true }],
    success: [
      { type: "put", key: keys.user(user.id), value: user },
      { type: "put", key: keys.userByEmail(input.email), value: { id: user.id } },
    ],
  });
  if (!res.succeeded) throw new ApiError("conflict", `a user with email ${input.email} exists`);
  return user;
}

/**
 * Checks credentials. Unknown email and wrong password fail identically (same message,
 * comparable timing).
 *
 * @throws ApiError `unauthenticated` "invalid email or password"
 */
export async function authenticate(
  store: Store,
  email: string,
  password: string,
): Promise<UserRecord> {
  const user = await getUserByEmail(store, email);
  const ok = await verifyPassword(password, user?.password_hash ?? await dummyHash());
  if (!user || !ok) throw new ApiError("unauthenticated", "invalid email or password");
  return user;
}

const BootstrapEnvSchema = z.object({
  email: z.string().email().max(254),
  password: z.string().min(1).max(1024),
});

/**
 * Creates the first admin when no admin exists and both bootstrap env vars are set.
 * Logs `bootstrap admin created` with the email only (never the password).
 *
 * @returns the created admin, or null when nothing was done
 * @throws Error naming the offending variable when the env vars are set but invalid (email
 *   not an address of ≤ 254 characters, password over 1024 characters) — startup fails loudly
 */
export async function ensureBootstrapAdmin(
  store: Store,
  getEnv: (name: string) => string | undefined,
  log: Logger,
): Promise<UserRecord | null> {
  const email = getEnv(BOOTSTRAP_EMAIL_ENV);
  const password = getEnv(BOOTSTRAP_PASSWORD_ENV);
  const users = await rangeAll<UserRecord>(store, keys.users);
  if (users.some((u) => u.value.role === "admin")) return null;
  if (!email || !password) {
    if (email || password) {
      log.warn("bootstrap admin not created: set both env vars", {
        vars: [BOOTSTRAP_EMAIL_ENV, BOOTSTRAP_PASSWORD_ENV],
      });
    } else {
      log.warn("no admin user exists; set the bootstrap admin env vars and restart", {
        vars: [BOOTSTRAP_EMAIL_ENV, BOOTSTRAP_PASSWORD_ENV],
      });
    }
    return null;
  }
  const parsed = BootstrapEnvSchema.safeParse({ email, password });
  if (!parsed.success) {
    // Name the variable at fault; zod's messages never echo the value (the password).
    throw new Error(
      parsed.error.issues.map((i) =>
        `${i.path[0] === "email" ? BOOTSTRAP_EMAIL_ENV : BOOTSTRAP_PASSWORD_ENV}: ${i.message}`
      ).join("; "),
    );
  }
  const existing = await getUserByEmail(store, email);
  if (existing) {
    // The email belongs to a non-admin: refuse to silently escalate it.
    log.warn("bootstrap admin not created: email belongs to an existing non-admin user", {
      email,
    });
    return null;
  }
  const user = await createUser(store, { email, password, role: "admin" });
  log.info("bootstrap admin created", { email: user.email, user_id: user.id });
  return user;
}

/**
 * Reads a user by reference: a user id (UUID) or an email address.
 *
 * @throws ApiError `not_found`
 */
export async function resolveUser(store: Store, ref: string): Promise<UserRecord> {
  const user = ref.includes("@") ? await getUserByEmail(store, ref) : await getUser(store, ref);
  if (!user) throw new ApiError("not_found", `user ${ref} not found`);
  return user;
}

/** Transaction compares that hold while the set of admins is unchanged. */
async function adminsUnchanged(store: Store): Promise<{ admins: number; compare: Compare[] }> {
  const admins = (await rangeAll<UserRecord>(store, keys.users))
    .filter((kv) => kv.value.role === "admin");
  return {
    admins: admins.length,
    compare: admins.map((kv) => ({ key: kv.key, modRevision: kv.modRevision })),
  };
}

const lastAdmin = (user: UserRecord, what: string) =>
  new ApiError(
    "conflict",
    `${user.email} is the last admin and cannot be ${what}: make another user admin first`,
    { user_id: user.id },
  );

/**
 * Sets a user's role (takes effect on their next request: credentials carry no role).
 *
 * @throws ApiError `not_found`, `conflict` (the last admin would be demoted)
 */
export async function setRole(store: Store, ref: string, role: Role): Promise<UserRecord> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const user = await resolveUser(store, ref);
    const kv = (await store.get<UserRecord>(keys.user(user.id)))!;
    const guard = await adminsUnchanged(store);
    if (user.role === "admin" && role !== "admin" && guard.admins <= 1) {
      throw lastAdmin(user, "demoted");
    }
    const next: UserRecord = { ...kv.value, role };
    const res = await store.txn({
      compare: [{ key: kv.key, modRevision: kv.modRevision }, ...guard.compare],
      success: [{ type: "put", key: kv.key, value: next }],
    });
    if (res.succeeded) return next;
  }
  throw new ApiError("conflict", "users changed concurrently; retry");
}

/**
 * Sets a user's password (admin reset, or after {@link changeOwnPassword}'s check).
 *
 * @throws ApiError `not_found`
 */
export async function setPassword(
  store: Store,
  ref: string,
  password: string,
): Promise<UserRecord> {
  const hash = await hashPassword(password);
  for (let attempt = 0; attempt < 20; attempt++) {
    const user = await resolveUser(store, ref);
    const kv = (await store.get<UserRecord>(keys.user(user.id)))!;
    const next: UserRecord = { ...kv.value, password_hash: hash };
    const res = await store.txn({
      compare: [{ key: kv.key, modRevision: kv.modRevision }],
      success: [{ type: "put", key: kv.key, value: next }],
    });
    if (res.succeeded) return next;
  }
  throw new ApiError("conflict", "user changed concurrently; retry");
}

/**
 * Changes the caller's own password after checking the current one.
 *
 * @throws ApiError `permission_denied` (wrong current password)
 */
export async function changeOwnPassword(
  store: Store,
  user: UserRecord,
  current: string,
  next: string,
): Promise<void> {
  if (!(await verifyPassword(current, user.password_hash))) {
    throw new ApiError("permission_denied", "the current password is wrong");
  }
  await setPassword(store, user.id, next);
}

/**
 * Deletes a user, their email index and every API token of theirs. Their VMs stay (an
 * operator or admin manages them); their access tokens stop working at once.
 *
 * @throws ApiError `not_found`, `conflict` (the last admin)
 */
export async function deleteUser(store: Store, ref: string): Promise<UserRecord> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const user = await resolveUser(store, ref);
    const kv = (await store.get<UserRecord>(keys.user(user.id)))!;
    const guard = await adminsUnchanged(store);
    if (user.role === "admin" && guard.admins <= 1) throw lastAdmin(user, "deleted");
    const tokens = await rangeAll<{ token_hash: string }>(store, keys.userApiTokens(user.id));
    const ops: Op[] = [
      { type: "delete", key: kv.key },
      { type: "delete", key: keys.userByEmail(user.email) },
      ...tokens.flatMap((t) => [
        { type: "delete" as const, key: t.key },
        { type: "delete" as const, key: keys.apiToken(t.value.token_hash) },
      ]),
    ];
    const res = await store.txn({
      compare: [{ key: kv.key, modRevision: kv.modRevision }, ...guard.compare],
      success: ops,
    });
    if (res.succeeded) return user;
  }
  throw new ApiError("conflict", "users changed concurrently; retry");
}

/**
 * Revokes API token `tokenId` of user `userId`.
 *
 * @throws ApiError `not_found`
 */
export async function revokeApiToken(
  store: Store,
  userId: string,
  tokenId: string,
): Promise<void> {
  const idx = await store.get<{ token_hash: string }>(keys.userApiToken(userId, tokenId));
  if (!idx) throw new ApiError("not_found", `api token ${tokenId} not found`);
  await store.txn({
    compare: [],
    success: [
      { type: "delete", key: keys.apiToken(idx.value.token_hash) },
      { type: "delete", key: idx.key },
    ],
  });
}

/** The API tokens of a user (records, never their secrets' plaintext). */
export async function listApiTokens(store: Store, userId: string): Promise<ApiTokenRecord[]> {
  const out: ApiTokenRecord[] = [];
  for (const idx of await rangeAll<{ token_hash: string }>(store, keys.userApiTokens(userId))) {
    const t = await store.get<ApiTokenRecord>(keys.apiToken(idx.value.token_hash));
    if (t) out.push(t.value);
  }
  return out;
}
