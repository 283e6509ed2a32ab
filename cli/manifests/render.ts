/**
 * Manifests as YAML (`vm get -o yaml`, `pool get -o yaml`, `network get -o yaml`): one
 * document per manifest, separated by `---` lines, keys in the manifest's order (`apiVersion`,
 * `kind`, `metadata`, `spec`), ready for `otherix apply -f`.
 *
 * @module
 */
import type { Manifest } from "../../shared/api/manifests.ts";
import { renderYaml } from "../render.ts";

/** The YAML stream of `docs` (empty string for none). */
export function renderManifests(docs: readonly Manifest[]): string {
  return docs.map((d) => renderYaml(d)).join("---\n");
}
