/**
 * Authentication wire types: login (JWT access tokens) and long-lived API tokens
 * (spec: developer guide, "Option A / Option B").
 *
 * @module
 */
import { z } from "zod";
import { TimestampSchema } from "./common.ts";

/** `POST /v1/auth/login` body. */
export const LoginRequestSchema = z.object({
  email: z.string().email().max(254),
  password: z.string().min(1).max(1024),
});
/** Login body. */
export type LoginRequest = z.infer<typeof LoginRequestSchema>;

/** `POST /v1/auth/login` response: a JWT bearer token. */
export const LoginResponseSchema = z.object({
  access_token: z.string(),
  token_type: z.literal("Bearer"),
  /** Seconds until expiry. */
  expires_in: z.number().int(),
  expires_at: TimestampSchema,
});
/** Login response. */
export type LoginResponse = z.infer<typeof LoginResponseSchema>;

/** `POST /v1/users/me/api-tokens` body. */
export const ApiTokenCreateRequestSchema = z.object({
  name: z.string().min(1).max(100),
  description: z.string().max(500).optional(),
  /** Lifetime in seconds; omitted means no expiry (spec: "no expiry by default"). */
  ttl_seconds: z.number().int().min(60).max(10 * 365 * 24 * 3600).optional(),
});
/** API token create body. */
export type ApiTokenCreateRequest = z.infer<typeof ApiTokenCreateRequestSchema>;

/** An API token's metadata (never the secret). */
export const ApiTokenSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  description: z.string().nullable(),
  created_at: TimestampSchema,
  expires_at: TimestampSchema.nullable(),
});
/** API token metadata. */
export type ApiToken = z.infer<typeof ApiTokenSchema>;

/** Create response: metadata plus the `otx_…` secret, shown exactly once. */
export const ApiTokenCreateResponseSchema = ApiTokenSchema.extend({
  plaintext_token: z.string(),
});
/** API token create response. */
export type ApiTokenCreateResponse = z.infer<typeof ApiTokenCreateResponseSchema>;

/** The caller as `GET /v1/users/me` returns it. */
export const UserSchema = z.object({
  id: z.string().uuid(),
  email: z.string(),
  role: z.enum(["admin", "operator", "developer", "viewer"]),
  created_at: TimestampSchema,
});
/** A user. */
export type User = z.infer<typeof UserSchema>;

/** `POST /v1/users` body (admin: creates a user with a role). */
export const UserCreateRequestSchema = z.object({
  email: z.string().email().max(254),
  password: z.string().min(8, "must be at least 8 characters").max(1024),
  role: UserSchema.shape.role,
}).strict();
/** User create body. */
export type UserCreateRequest = z.infer<typeof UserCreateRequestSchema>;
