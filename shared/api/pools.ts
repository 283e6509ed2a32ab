/**
 * Storage pool instances (spec: storage pools reference). A pool name is cluster-wide; each
 * (name, node) pair is one instance with a path on that node.
 *
 * @module
 */
import { z } from "zod";
import { CachedImageSchema } from "./nodes.ts";
import { TimestampSchema } from "./common.ts";

/** A pool instance as `GET /v1/pools` serves it. */
export const PoolInstanceSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  node: z.string(),
  type: z.literal("local_dir"),
  path: z.string(),
  /** `pending` until the agent reports the directory ready. */
  status: z.enum(["pending", "ready", "failed"]),
  message: z.string().nullable(),
  total_bytes: z.number().int().nullable(),
  available_bytes: z.number().int().nullable(),
  images: z.array(CachedImageSchema),
  is_default: z.boolean(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A pool instance. */
export type PoolInstance = z.infer<typeof PoolInstanceSchema>;
