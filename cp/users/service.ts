/**
 * Users: creation (email unique, case-insensitive), lookup, login, and the first-boot admin
 * from `OTHERIX_BOOTSTRAP_ADMIN_EMAIL` / `OTHERIX_BOOTSTRAP_ADMIN_PASSWORD` (spec: "Setup",
 * step 3).
 *
 * @module
 */
import { z } from "zod";
import { ApiError } from "../../shared/errors.ts";
import type { Logger } from "../../shared/log.ts";
import type { Role } from "../../shared/rbac.ts";
import type { User } from "../../shared/api/auth.ts";
import { dummyHash, hashPassword, verifyPassword } from "../auth/passwords.ts";
import { keys, type UserRecord } from "../repo/records.ts";
import { rangeAll, type Store } from "../store/store.ts";

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
