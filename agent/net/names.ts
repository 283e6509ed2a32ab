/**
 * Names of the devices the agent creates (Linux interface names: at most 15 bytes) and the
 * alias that marks them as Otherix's (`ip link set … alias otherix:<network>`): the agent
 * never changes or removes a link without it, so an existing host bridge of the same name is
 * refused rather than taken over.
 *
 * - TAP of NIC `i` of VM `id`: `oxt` + the first 10 hex digits of the id + `i` (14 bytes);
 * - VXLAN device `oxv<vni>` of an overlay (at most 11 bytes; its bridge, `oxb<vni>`, is named
 *   by the control plane: shared/api/networks.ts `overlayBridgeName`).
 *
 * @module
 */

/** The alias of a device the agent created for network `network`. */
export function aliasOf(network: string): string {
  return `otherix:${network}`;
}

/** The TAP device of NIC `index` of VM `vmId`. */
export function tapName(vmId: string, index: number): string {
  return `oxt${vmId.replaceAll("-", "").slice(0, 10).toLowerCase()}${index}`;
}

/** The VXLAN device of the overlay with VNI `vni`. */
export function vxlanName(vni: number): string {
  return `oxv${vni}`;
}
