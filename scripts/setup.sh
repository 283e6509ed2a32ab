#!/usr/bin/env bash
# Installs what Otherix needs on a fresh Debian/Ubuntu machine; re-running is harmless.
#   - Deno (pinned; from the npm package `deno`, or Deno's official installer where npm is absent)
#   - Debian packages the agent and the tests use (QEMU, qemu-img, genisoimage, the network
#     tools: iproute2, dnsmasq-base, iptables; etcd for the control plane's etcd store; and
#     the offline test-image inputs: kernel, busybox, syslinux, mtools)
#   - the npm dependencies (deno install, against the committed deno.lock)
# Usage: scripts/setup.sh            (everything)
#        OTHERIX_SKIP_APT=1 scripts/setup.sh   (skip Debian packages)
set -euo pipefail

DENO_VERSION="2.9.6"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages: agent runtime + test-image inputs + test tools.
APT_PACKAGES=(
  qemu-system-x86 qemu-utils genisoimage   # agent: emulator, disk tool, NoCloud ISO builder
  busybox-static syslinux syslinux-common mtools dosfstools cpio kmod   # offline test image
  ca-certificates curl procps   # procps: pgrep/pkill (the agent's pidfile-locked force stop)
  iproute2 dnsmasq-base iptables   # agent networks: bridges/VXLAN/TAPs, DHCP+DNS, NAT
  etcd-server etcd-client   # control plane store.backend: etcd (its member; etcdctl), tests
)
# Only for the test suite (scripts/test.sh sets OTHERIX_SETUP_TESTS=1): the browser the
# console page is tested in (driven by npm playwright-core), `script` for pty tests, the
# official Prometheus client's exposition parser (test/prometheus.ts).
if [ "${OTHERIX_SETUP_TESTS:-}" = "1" ]; then
  APT_PACKAGES+=(chromium bsdutils python3-prometheus-client)
  # test/deploy: systemd-analyze verifies the units in deploy/systemd (systemd need not run);
  # strace checks the control plane's system calls against its unit's filter.
  APT_PACKAGES+=(systemd strace)
  # zsh and fish load the `otherix completion` scripts for real (test/cli/completion_test.ts).
  APT_PACKAGES+=(zsh fish)
fi

log() { printf '>> setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt() {
  [ "${OTHERIX_SKIP_APT:-}" = "1" ] && { log "skipping Debian packages (OTHERIX_SKIP_APT=1)"; return; }
  command -v apt-get >/dev/null || { log "no apt-get: install ${APT_PACKAGES[*]} yourself"; return; }
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages present"
    return
  fi
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian's etcd-server enables and starts its own etcd on 2379/2380 under systemd: the
  # control plane runs its own member (and the tests theirs), so keep that one off.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
}

install_deno() {
  if command -v deno >/dev/null && deno --version 2>/dev/null | head -1 | grep -q "deno ${DENO_VERSION} "; then
    log "deno ${DENO_VERSION} present"
    return
  fi
  if command -v npm >/dev/null; then
    log "installing deno@${DENO_VERSION} from npm"
    as_root npm install -g --no-fund --no-audit "deno@${DENO_VERSION}"
  else
    log "npm absent: installing deno v${DENO_VERSION} with Deno's official installer"
    curl -fsSL https://deno.land/install.sh | sh -s -- -y "v${DENO_VERSION}"
    export DENO_INSTALL="${DENO_INSTALL:-$HOME/.deno}"
    export PATH="$DENO_INSTALL/bin:$PATH"
    log "add $DENO_INSTALL/bin to your PATH"
  fi
  deno --version | head -1 >&2
}

install_npm_deps() {
  log "installing npm dependencies (deno.lock)"
  (cd "$REPO" && deno install --frozen --quiet)
}

install_apt
install_deno
install_npm_deps
log "done"
