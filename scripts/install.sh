#!/usr/bin/env bash
# Installs Otherix on a Linux host to run as systemd services; re-running is harmless (binaries,
# units and docs are replaced, existing configs are never touched).
#
#   scripts/install.sh [--destdir DIR] [--prefix DIR] [--bin-dir DIR] [--enable]
#
#   --destdir DIR   stage everything under DIR (packaging, tests); also $DESTDIR. Creates no
#                   user and runs no systemctl.
#   --prefix DIR    where binaries and docs go (default /usr/local): DIR/bin/otherix-api,
#                   otherix-agent, otherix; DIR/share/doc/otherix/ (README, example configs)
#   --bin-dir DIR   the compiled binaries to install (default bin/, from `deno task compile`)
#   --enable        also `systemctl enable` both units (not with --destdir)
#
# What it lays out (modes in brackets):
#   /etc/systemd/system/otherix-api.service, otherix-agent.service [0644]  (deploy/systemd/)
#   /etc/otherix/ [0755]; api.yaml [0640, group otherix] and agent.yaml [0644] from
#     deploy/config/*.example.yaml when absent
#   /var/lib/otherix/ [0755], /var/lib/otherix/api/ [0700, user otherix], /var/lib/otherix/pools/
#     [0750]; /run/otherix comes from the agent unit (RuntimeDirectory=)
#   the system user and group `otherix` the control plane runs as
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PREFIX="/usr/local"
BIN_DIR="$REPO/bin"
ENABLE=0
BINARIES=(otherix-api otherix-agent otherix)
UNITS=(otherix-api.service otherix-agent.service)

log() { printf '>> install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --bin-dir) BIN_DIR="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute, got $PREFIX" ;; esac
if [ -n "$DESTDIR" ]; then
  case "$DESTDIR" in /*) ;; *) DESTDIR="$(pwd)/$DESTDIR" ;; esac
  DESTDIR="${DESTDIR%/}"
  [ "$ENABLE" = 1 ] && die "--enable cannot be combined with --destdir"
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (or stage into a directory with --destdir)"
fi

for b in "${BINARIES[@]}"; do
  [ -x "$BIN_DIR/$b" ] || die "missing $BIN_DIR/$b: run \`deno task compile\` first (offline: \
set DENORT_BIN to a denort binary of the same Deno version)"
done

D="$DESTDIR"
# Ownership is only set on a real install (the user exists there); staged trees stay root's.
chown_real() { if [ -z "$D" ]; then chown "$@"; fi; }

if [ -z "$D" ]; then
  if ! getent group otherix >/dev/null; then
    log "creating system group otherix"
    groupadd --system otherix
  fi
  if ! getent passwd otherix >/dev/null; then
    log "creating system user otherix (the control plane runs as it)"
    useradd --system --gid otherix --home-dir /var/lib/otherix/api --no-create-home \
      --shell /usr/sbin/nologin --comment "Otherix control plane" otherix
  fi
fi

log "binaries -> $D$PREFIX/bin"
install -d -m 0755 "$D$PREFIX/bin"
for b in "${BINARIES[@]}"; do
  install -m 0755 "$BIN_DIR/$b" "$D$PREFIX/bin/$b"
done

log "systemd units -> $D/etc/systemd/system"
install -d -m 0755 "$D/etc/systemd/system"
for u in "${UNITS[@]}"; do
  # The units name /usr/local; another prefix is substituted.
  sed -e "s|/usr/local/|$PREFIX/|g" "$REPO/deploy/systemd/$u" >"$D/etc/systemd/system/$u.tmp"
  chmod 0644 "$D/etc/systemd/system/$u.tmp"
  mv -f "$D/etc/systemd/system/$u.tmp" "$D/etc/systemd/system/$u"
done

DOC="$D$PREFIX/share/doc/otherix"
log "docs and example configs -> $DOC"
install -d -m 0755 "$DOC" "$DOC/examples"
install -m 0644 "$REPO/README.md" "$DOC/README.md"
install -m 0644 "$REPO/deploy/config/api.example.yaml" "$REPO/deploy/config/agent.example.yaml" \
  "$DOC/examples/"

log "configs -> $D/etc/otherix (existing files are kept)"
install -d -m 0755 "$D/etc/otherix"
if [ ! -e "$D/etc/otherix/api.yaml" ]; then
  install -m 0640 "$REPO/deploy/config/api.example.yaml" "$D/etc/otherix/api.yaml"
  chown_real root:otherix "$D/etc/otherix/api.yaml"
  log "  wrote /etc/otherix/api.yaml (workers stay off until agent_client is enabled)"
fi
if [ ! -e "$D/etc/otherix/agent.yaml" ]; then
  install -m 0644 "$REPO/deploy/config/agent.example.yaml" "$D/etc/otherix/agent.yaml"
  log "  wrote /etc/otherix/agent.yaml"
fi

log "state directories -> $D/var/lib/otherix"
install -d -m 0755 "$D/var/lib/otherix"
install -d -m 0700 "$D/var/lib/otherix/api"
chown_real otherix:otherix "$D/var/lib/otherix/api"
install -d -m 0750 "$D/var/lib/otherix/pools"

if [ -z "$D" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    systemctl enable "${UNITS[@]}"
  fi
fi

cat <<MSG
>> install: done${D:+ (staged under $D)}
Next:
  1. /etc/otherix/api.env (mode 0600): OTHERIX_BOOTSTRAP_ADMIN_EMAIL=… and
     OTHERIX_BOOTSTRAP_ADMIN_PASSWORD=… for the first start, then remove them.
  2. systemctl enable --now otherix-api; then set agent_client.enabled and workers.enabled to
     true in /etc/otherix/api.yaml and systemctl restart otherix-api (Phase 2 lock).
  3. On each node: the join files in /etc/otherix (see agent.yaml) and
     systemctl enable --now otherix-agent
MSG
