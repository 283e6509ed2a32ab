/**
 * User management wire types (issue 9), beside the login and API-token types of
 * `auth.ts`:
 *
 * - `GET /v1/users?limit=&cursor=` (`user:manage`) → `{items: User[], next_cursor}`
 * - `GET /v1/users/{ref}` (`user:manage`) → User; `ref` is a user id or an email
 * - `PUT /v1/users/{ref}/role` {@link UserRoleUpdateRequestSchema} → User (409 `conflict` when
 *   it would leave no admin)
 * - `PUT /v1/users/{ref}/password` {@link UserPasswordResetRequestSchema} → 204
 * - `DELETE /v1/users/{ref}` → 204 (409 `conflict` for the last admin); the user's API tokens
 *   go with it
 * - `GET /v1/users/{ref}/api-tokens`, `DELETE /v1/users/{ref}/api-tokens/{id}` (`user:manage`):
 *   anyone's API tokens
 * - `PUT /v1/users/me/password` {@link PasswordChangeRequestSchema} (`token:self`) → 204
 * - `DELETE /v1/users/me/api-tokens/current` → 204: revokes the API token the request is
 *   authenticated with (what `otherix config remove` calls); 409 `conflict` for a JWT
 *
 * @module
 */
import { z } from "zod";
import { UserSchema } from "./auth.ts";

/** A password a user may get: 8 to 1024 characters (as at create). */
export const PasswordSchema = z.string()
  .min(8, "must be at least 8 characters")
  .max(1024, "must be at most 1024 characters");

/** A user reference in a path: a user id (UUID) or an email address. */
export const UserRefSchema = z.string().min(1).max(254).refine(
  (s) => z.string().uuid().safeParse(s).success || z.string().email().safeParse(s).success,
  "must be a user id or an email address",
);

/** `PUT /v1/users/{ref}/role` body. */
export const UserRoleUpdateRequestSchema = z.object({ role: UserSchema.shape.role }).strict();
/** Role update body. */
export type UserRoleUpdateRequest = z.infer<typeof UserRoleUpdateRequestSchema>;

/** `PUT /v1/users/{ref}/password` body (admin reset). */
export const UserPasswordResetRequestSchema = z.object({ password: PasswordSchema }).strict();
/** Password reset body. */
export type UserPasswordResetRequest = z.infer<typeof UserPasswordResetRequestSchema>;

/** `PUT /v1/users/me/password` body (own change: the current password is required). */
export const PasswordChangeRequestSchema = z.object({
  current_password: z.string().min(1).max(1024),
  new_password: PasswordSchema,
}).strict();
/** Password change body. */
export type PasswordChangeRequest = z.infer<typeof PasswordChangeRequestSchema>;
