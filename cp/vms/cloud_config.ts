/**
 * The user-data a VM is created with: the user's cloud-config with `vm create --ssh-key`'s
 * keys merged in (issue 8 "Reachability"). Both inputs were validated by the request schema
 * (shared/api/vms.ts `UserDataSchema`, `SshPublicKeySchema`); this module only merges.
 *
 * The keys are appended to the document's top-level `ssh_authorized_keys` (cloud-init gives
 * those to the distribution's default user), skipping keys already listed; the list is created
 * when absent. The user's document is edited in place (YAML 1.1, like cloud-init), so its
 * comments, key order and scalar styles (e.g. the octal `0644` of `write_files`) survive.
 *
 * @module
 */
import { isMap, isSeq } from "yaml";
import { CLOUD_CONFIG_HEADER, parseCloudConfig } from "../../shared/api/cloud_config.ts";
import { VM_LIMITS } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";

/**
 * The user-data to record for a create: `userData` verbatim when there are no keys (null when
 * both are absent), else the merge described in the module doc.
 *
 * @param userData validated cloud-config, or undefined
 * @param keys validated SSH public key lines, or undefined
 * @throws ApiError `validation_failed` when the merged user-data is larger than
 *   `VM_LIMITS.userDataBytes` (the limit the agent enforces too), or (defensively) when
 *   `userData` is not cloud-config
 */
export function mergeCloudConfig(
  userData: string | undefined,
  keys: readonly string[] | undefined,
): string | null {
  if (!keys || keys.length === 0) return userData ?? null;
  const parsed = parseCloudConfig(userData ?? `${CLOUD_CONFIG_HEADER}\n`);
  if ("problem" in parsed) {
    throw new ApiError("validation_failed", `invalid request: user_data: ${parsed.problem}`, {
      fields: [{ path: "user_data", message: parsed.problem }],
    });
  }
  const { doc } = parsed;
  if (!isMap(doc.contents)) doc.contents = doc.createNode({});
  const listed = doc.get("ssh_authorized_keys", true);
  const seq = isSeq(listed) ? listed : null;
  const present = new Set(seq ? seq.items.map((i) => String((i as { value: unknown }).value)) : []);
  const add = [...new Set(keys.map((k) => k.trim()))].filter((k) => !present.has(k));
  if (seq) { for (const k of add) seq.add(doc.createNode(k)); }
  else doc.set("ssh_authorized_keys", doc.createNode(add));
  // lineWidth 0: never fold a long line (a key stays on one line, as in a .pub file).
  const merged = `${CLOUD_CONFIG_HEADER}\n${doc.toString({ lineWidth: 0 })}`;
  const bytes = new TextEncoder().encode(merged).length;
  if (bytes > VM_LIMITS.userDataBytes) {
    const message = `user_data with ssh_authorized_keys merged is ${bytes} bytes, ` +
      `at most ${VM_LIMITS.userDataBytes}`;
    throw new ApiError("validation_failed", `invalid request: ${message}`, {
      fields: [{ path: "user_data", message }],
    });
  }
  return merged;
}
