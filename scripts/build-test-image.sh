#!/usr/bin/env bash
# Build the Otherix end-to-end test disk image.
#
# Produces a small, BIOS-bootable x86_64 raw disk image:
#
#   <out>/otherix-test.img         raw disk: MBR (syslinux mbr.bin) + one
#                                  bootable FAT16 partition at 1 MiB holding
#                                  ldlinux.sys/ldlinux.c32, syslinux.cfg,
#                                  the Debian kernel and a busybox initramfs
#   <out>/otherix-test.img.sha256  lowercase hex SHA-256 of the image
#   <out>/otherix-test.img.stamp   build stamp (script hash + input versions)
#   <out>/debs/                    cached kernel and busybox-static .debs
#
# The initramfs /init loads the storage/ISO 9660 modules, looks for a
# cloud-init NoCloud seed (ISO 9660 labelled "cidata"), prints
#   otherix-test-image: hostname=<local-hostname>
#   otherix-test-image: marker=<text>        (one per "otherix-marker:" line)
#   otherix-test-image: ssh-authorized-key=<type> <comment>  (one per key)
#   Cloud-init v. 0.0-otherix-test finished at <date>. Datasource DataSourceNoCloud.
#     (cloud-init's final line; its error lines before it when the user-data
#     has "otherix-fail-cloud-init: true")
#   otherix-test-image: net <nic> <ifname> <mac> <addr>[,<addr>...]
#     (one per NIC of the seed's "network-config", version 2, matched by MAC:
#     static "addresses", "mtu", "routes" (to/via) or "gateway4",
#     "nameservers" -> /etc/resolv.conf; a "dhcp4: true" NIC runs busybox
#     udhcpc in the background and prints "net <nic> <ifname> <mac>
#     dhcp <addr>/<prefix>" once it has a lease)
# (or "otherix-test-image: no cidata seed found") on ttyS0, sets the hostname
# and runs a respawning getty (login: root, no password; the shell prompt is
# "/root # ") on ttyS0. Kernel messages stay off the console after the seed
# search (`dmesg` shows them).
#
# Power (what QEMU reports over QMP in brackets):
#   ACPI power button (QMP system_powerdown) -> the button + evdev modules
#     and busybox acpid run `poweroff`, i.e. the clean path below
#     [POWERDOWN, then SHUTDOWN guest=true reason=guest-shutdown; under TCG
#     ~0.1 s after the button when nothing lingers]. Pressed before acpid
#     starts (the first seconds of the boot), the button is ignored.
#   `poweroff` / `reboot` / `halt` at the shell -> PID 1 (/init) gets
#     SIGUSR2 / SIGTERM / SIGUSR1, prints "otherix-test-image: shutdown:
#     <verb>", sends SIGTERM + SIGHUP to every process, waits up to 2 s for
#     them, SIGKILLs the rest, syncs and calls reboot(2)
#     [poweroff: SHUTDOWN guest=true reason=guest-shutdown;
#      reboot: RESET guest=true reason=guest-reset (QEMU may report it more
#      than once), and the guest boots again to the login prompt;
#      halt: the CPU halts and QEMU keeps running].
#   `poweroff -f` / `reboot -f` -> reboot(2) at once, no cleanup (same
#     events).
#
# Everything comes from Debian packages (kernel, busybox-static, syslinux,
# mtools, cpio, kmod) and nothing is mounted: the FAT filesystem is written
# with mtools and syslinux's mtools-based installer, the MBR with dd. The
# build is reproducible: the same inputs give the same image bytes.
#
# Usage: scripts/build-test-image.sh [OUTPUT_DIR]
#   OUTPUT_DIR defaults to <repo>/.cache/test-image.
#   The build is skipped when the image exists, matches its .sha256 file and
#   was built by this exact script (stamp = sha256 of this file).
#   Set OTHERIX_TEST_IMAGE_REBUILD=1 to force a rebuild (e.g. after a kernel
#   update).
# The last line printed on stdout is the absolute path of the image; all
# progress messages go to stderr.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
OUT_DIR=${1:-"$REPO_ROOT/.cache/test-image"}
IMAGE_NAME=otherix-test.img

# Kernel modules needed to find the seed and the VM disk, on both QEMU
# machine types: "pc" (PIIX IDE) and "q35" (ICH9 AHCI), and to see the ACPI
# power button. Their dependencies (libata, libahci, scsi_mod, virtio, ...)
# are resolved via modules.dep.
WANTED_MODULES=(
  ata_piix ata_generic   # pc: PIIX3 IDE controller
  ahci                   # q35: ICH9 AHCI controller
  sr_mod cdrom isofs     # the seed CD-ROM and its ISO 9660 filesystem
  sd_mod                 # seeds attached as SCSI/SATA disks (/dev/sd*)
  virtio_pci virtio_blk  # the VM's own disk (/dev/vd*)
  virtio_net             # NICs on Otherix networks (TAP + virtio-net-pci)
  button evdev           # ACPI power button as /dev/input/event* (read by acpid)
)

# Host tools needed to build the image (Debian package names).
TOOL_PACKAGES=(syslinux syslinux-common mtools cpio kmod)

SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
SYSLINUX_BIOS_DIR=/usr/lib/syslinux/modules/bios

log() { printf 'build-test-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Stage 0: cache check. Cheap, so a re-run costs a sha256 of the image.
# ---------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
IMAGE="$OUT_DIR/$IMAGE_NAME"
STAMP="$OUT_DIR/$IMAGE_NAME.stamp"
SCRIPT_SHA=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)

# Serialise concurrent builds into the same directory (e.g. parallel tests).
exec 9>"$OUT_DIR/.lock"
flock 9

cache_is_valid() {
  [[ -f "$IMAGE" && -f "$IMAGE.sha256" && -f "$STAMP" ]] || return 1
  [[ "$(head -n1 "$STAMP")" == "script-sha256 $SCRIPT_SHA" ]] || return 1
  [[ "$(sha256sum "$IMAGE" | cut -d' ' -f1)" == "$(cat "$IMAGE.sha256")" ]]
}

if [[ "${OTHERIX_TEST_IMAGE_REBUILD:-0}" != 1 ]] && cache_is_valid; then
  log "up to date: $IMAGE"
  printf '%s\n' "$IMAGE"
  exit 0
fi

# ---------------------------------------------------------------------------
# Stage 1: make sure the host tools are installed.
# ---------------------------------------------------------------------------
pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

ensure_packages() {
  local missing=() p
  for p in "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]}); run as root or install them"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    # A fresh machine may have no package lists yet.
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
}

packages=("${TOOL_PACKAGES[@]}")
# busybox-static conflicts with (and would remove) the dynamic "busybox";
# in that case we rely on the downloaded .deb below instead.
pkg_installed busybox || packages+=(busybox-static)
ensure_packages "${packages[@]}"

for f in "$SYSLINUX_MBR" "$SYSLINUX_BIOS_DIR/ldlinux.c32"; do
  [[ -f "$f" ]] || die "$f not found (syslinux-common)"
done

WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEB_DIR="$OUT_DIR/debs"
mkdir -p "$DEB_DIR"

# Download the candidate version of a Debian package into $DEB_DIR (reused if
# already there; other versions are dropped) and extract it into directory $2.
fetch_deb() {
  local pkg=$1 dest=$2 ver deb=""
  ver=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
  [[ -n "$ver" && "$ver" != "(none)" ]] || return 1
  # apt-get download encodes the epoch colon as %3a in the file name.
  local want="${pkg}_${ver//:/%3a}_"
  find "$DEB_DIR" -maxdepth 1 -name "${pkg}_*.deb" ! -name "${want}*" -delete
  deb=$(find "$DEB_DIR" -maxdepth 1 -name "${want}*.deb" -print -quit)
  if [[ -z "$deb" ]]; then
    log "downloading $pkg $ver"
    # Sandbox user root: _apt may not be able to write into the cache dir.
    (cd "$DEB_DIR" && apt-get download -o APT::Sandbox::User=root "$pkg=$ver" >&2) || return 1
    deb=$(find "$DEB_DIR" -maxdepth 1 -name "${want}*.deb" -print -quit)
    [[ -n "$deb" ]] || return 1
  fi
  log "extracting $(basename "$deb")"
  mkdir -p "$dest"
  dpkg-deb -x "$deb" "$dest"
}

# ---------------------------------------------------------------------------
# Stage 2: kernel + modules. Preferred: the versioned kernel package that
# linux-image-amd64 depends on, extracted from its .deb (independent of the
# host's /boot). Fallback: newest kernel installed on the host.
# ---------------------------------------------------------------------------
KVER="" VMLINUZ="" MODDIR=""

kernel_from_deb() {
  local kpkg root
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
  if [[ -z "$kpkg" && $(id -u) -eq 0 ]]; then
    # No package lists yet (a fresh machine whose tools were already installed).
    apt-get update >&2 || true
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
  fi
  [[ -n "$kpkg" ]] || return 1
  # Drop .debs of other kernel ABIs.
  find "$DEB_DIR" -maxdepth 1 -name 'linux-image-*.deb' ! -name "${kpkg}_*" -delete
  root="$WORK/kernel"
  fetch_deb "$kpkg" "$root" || return 1
  VMLINUZ=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
  [[ -n "$VMLINUZ" ]] || return 1
  KVER=${VMLINUZ##*/vmlinuz-}
  if [[ -d "$root/lib/modules/$KVER" ]]; then
    MODDIR="$root/lib/modules/$KVER"
  else
    MODDIR="$root/usr/lib/modules/$KVER"
    mkdir -p "$root/lib/modules" && ln -s "$MODDIR" "$root/lib/modules/$KVER"
  fi
  # The .deb ships no modules.dep (postinst generates it): build it here.
  depmod -b "$root" "$KVER"
}

kernel_from_host() {
  local v
  while IFS= read -r v; do
    if [[ -f "/boot/vmlinuz-$v" && -f "/lib/modules/$v/modules.dep" ]]; then
      KVER=$v VMLINUZ="/boot/vmlinuz-$v" MODDIR="/lib/modules/$v"
      return 0
    fi
  done < <(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -rV)
  return 1
}

if kernel_from_deb; then
  KERNEL_SOURCE="Debian package"
else
  log "warning: could not use the linux-image-amd64 .deb; falling back to /boot"
  kernel_from_host || die "no usable kernel (install linux-image-amd64)"
  KERNEL_SOURCE="host /boot"
fi
log "kernel $KVER from $KERNEL_SOURCE"

# ---------------------------------------------------------------------------
# Stage 3: static busybox, from the busybox-static .deb if possible, else the
# installed /bin/busybox (which must be the static build).
# ---------------------------------------------------------------------------
BUSYBOX=""
if fetch_deb busybox-static "$WORK/busybox" && [[ -x "$WORK/busybox/bin/busybox" ]]; then
  BUSYBOX="$WORK/busybox/bin/busybox"
elif [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; then
  BUSYBOX=/bin/busybox
else
  die "no static busybox (install busybox-static)"
fi
BB_VERSION=$("$BUSYBOX" 2>&1 | head -n1 || true)
log "busybox: $BB_VERSION"

# ---------------------------------------------------------------------------
# Stage 4: resolve the module load order from modules.dep (depth-first, so
# every module comes after its dependencies), skipping built-in modules.
# ---------------------------------------------------------------------------
declare -A MOD_PATH=() MOD_DEPS=() BUILTIN=() SEEN=()
LOAD_ORDER=()

modname() { # path/to/foo-bar.ko[.xz] -> foo_bar
  local n=${1##*/}
  n=${n%%.ko*}
  printf '%s' "${n//-/_}"
}

while IFS= read -r line; do
  path=${line%%:*}
  name=$(modname "$path")
  MOD_PATH[$name]=$path
  MOD_DEPS[$name]=${line#*:}
done <"$MODDIR/modules.dep"

if [[ -f "$MODDIR/modules.builtin" ]]; then
  while IFS= read -r path; do
    BUILTIN[$(modname "$path")]=1
  done <"$MODDIR/modules.builtin"
fi

resolve_module() {
  local name=${1//-/_} dep
  [[ -n "${SEEN[$name]:-}" ]] && return 0
  SEEN[$name]=1
  [[ -n "${BUILTIN[$name]:-}" ]] && return 0
  [[ -n "${MOD_PATH[$name]:-}" ]] || die "module $name not found in $MODDIR"
  for dep in ${MOD_DEPS[$name]}; do
    resolve_module "$(modname "$dep")"
  done
  LOAD_ORDER+=("${MOD_PATH[$name]}")
}

for m in "${WANTED_MODULES[@]}"; do
  resolve_module "$m"
done
log "modules: ${#LOAD_ORDER[@]} ($(for p in "${LOAD_ORDER[@]}"; do modname "$p"; printf ' '; done))"

# ---------------------------------------------------------------------------
# Stage 5: the initramfs tree.
# ---------------------------------------------------------------------------
ROOT="$WORK/initramfs"
mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,tmp,root,run,mnt/seed,lib/modules/"$KVER"}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
ln -s bin "$ROOT/sbin"
mkdir -p "$ROOT/usr"
ln -s ../bin "$ROOT/usr/bin"
ln -s ../bin "$ROOT/usr/sbin"

# busybox + one symlink per applet.
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$ROOT/bin/$applet"
done

# Modules, uncompressed (busybox insmod may lack xz/zstd support), in their
# usual tree plus a trimmed modules.dep so that busybox modprobe also works
# from the shell. /lib/modules/load-order is what /init insmods.
kmods="$ROOT/lib/modules/$KVER"
: >"$ROOT/lib/modules/load-order"
: >"$kmods/modules.dep"
for path in "${LOAD_ORDER[@]}"; do
  rel=${path%.ko*}.ko
  mkdir -p "$kmods/$(dirname "$rel")"
  case "$path" in
    *.ko) cp "$MODDIR/$path" "$kmods/$rel" ;;
    *.ko.xz) xz -dc "$MODDIR/$path" >"$kmods/$rel" ;;
    *.ko.zst) zstd -qdc "$MODDIR/$path" >"$kmods/$rel" ;;
    *.ko.gz) gzip -dc "$MODDIR/$path" >"$kmods/$rel" ;;
    *) die "unsupported module file $path" ;;
  esac
  printf '%s\n' "$KVER/$rel" >>"$ROOT/lib/modules/load-order"
  deps=""
  for dep in ${MOD_DEPS[$(modname "$path")]}; do
    deps+=" ${dep%.ko*}.ko"
  done
  printf '%s:%s\n' "$rel" "$deps" >>"$kmods/modules.dep"
done

# Passwordless root; busybox login accepts an empty password field.
cat >"$ROOT/etc/passwd" <<'EOF'
root::0:0:root:/root:/bin/sh
EOF
cat >"$ROOT/etc/shadow" <<'EOF'
root::0:0:99999:7:::
EOF
chmod 0600 "$ROOT/etc/shadow"
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
EOF
printf 'Otherix test image (log in as root, no password)\n\n' >"$ROOT/etc/issue"
printf 'otherix-test\n' >"$ROOT/etc/hostname"

# busybox udhcpc calls this with $1 = deconfig | bound | renew | leasefail |
# nfail and the lease in the environment ($ip, $mask = prefix length, $router,
# $dns); OTHERIX_NIC names the network-config entry for the console line.
mkdir -p "$ROOT/etc/udhcpc"
cat >"$ROOT/etc/udhcpc/script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" 2>/dev/null; ip link set dev "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    [ -n "$dns" ] && for d in $dns; do echo "nameserver $d"; done >/etc/resolv.conf
    [ "$1" = bound ] && echo "otherix-test-image: net ${OTHERIX_NIC:-?} $interface" \
      "$(cat "/sys/class/net/$interface/address") dhcp $ip/$mask" >/dev/console
    ;;
esac
exit 0
EOF
chmod 0755 "$ROOT/etc/udhcpc/script"

# network-config (version 2) -> one line per NIC: "<nic> <mac> <mtu> <dhcp4>
# <addr,...> <to>><via>,... <gateway4> <dns,...>" ("-": unset). Handles the
# block style Otherix writes and inline lists ("addresses: [a, b]").
cat >"$ROOT/etc/netcfg.awk" <<'EOF'
function val(s) { sub(/^[^:]*:[ \t]*/, "", s); gsub(/["' \t]/, "", s); return s }
function add(list, v) { return list == "" ? v : list "," v }
function flush() {
  if (nic != "")
    print nic, dash(mac), dash(mtu), dash(dhcp), dash(addrs), dash(routes), dash(gw), dash(dns)
  nic = mac = mtu = dhcp = addrs = routes = gw = dns = rto = rvia = sect = ""
}
function dash(v) { return v == "" ? "-" : v }
function route() {
  if (rto != "" && rvia != "") { routes = add(routes, rto ">" rvia); rto = rvia = "" }
}
/^[ \t]*(#|$)/ { next }
/^ethernets:/ { eth = 1; next }
/^[^ ]/ { if (eth) flush(); eth = 0; next }
!eth { next }
/^  [^ ]/ { flush(); nic = $1; sub(/:$/, "", nic); next }
/^    [^ -]/ {
  key = $1; sub(/:.*/, "", key); sect = key; v = val($0)
  if (key == "mtu") mtu = v
  else if (key == "dhcp4") dhcp = v
  else if (key == "gateway4") gw = v
  else if (key == "addresses" && v ~ /^\[/) { gsub(/[][]/, "", v); addrs = v }
  if ($0 ~ /macaddress:/) {
    m = $0; sub(/.*macaddress:[ \t]*/, "", m); gsub(/["'{} \t]/, "", m); mac = tolower(m)
  }
  next
}
{
  line = $0
  if (line ~ /macaddress:/) { mac = tolower(val(line)); next }
  if (line ~ /^[ \t]*- /) { item = 1; sub(/^[ \t]*- /, "", line) } else item = 0
  if (sect == "addresses" && item) { gsub(/["' \t]/, "", line); addrs = add(addrs, line) }
  else if (sect == "routes") {
    if (line ~ /^[ \t]*to:/) rto = val(line)
    if (line ~ /^[ \t]*via:/) rvia = val(line)
    route()
  } else if (sect == "nameservers" && item) { gsub(/["' \t]/, "", line); dns = add(dns, line) }
  else if (sect == "nameservers" && line ~ /addresses:.*\[/) {
    v = val(line); gsub(/[][]/, "", v); dns = add(dns, v)
  }
}
END { flush() }
EOF

# ACPI power button: busybox acpid reads /dev/input/event*, turns KEY_POWER
# (from the button module's "Power Button" device) into the event
# "button/power PWRF 00000080" and, by /etc/acpid.conf ("<substring>
# <handler>"), runs /etc/acpi/PWRF/00000080 (relative to its -c dir). The
# handler asks PID 1 to power off (busybox poweroff without -f sends PID 1
# SIGUSR2), so the button and a typed `poweroff` share one shutdown path.
mkdir -p "$ROOT/etc/acpi/PWRF" "$ROOT/var/log"
ln -s ../run "$ROOT/var/run"
printf 'PWRF PWRF/00000080\n' >"$ROOT/etc/acpid.conf"
printf '%s\n' '#!/bin/sh' \
  '# Run by acpid on the ACPI power button (QMP system_powerdown).' \
  'exec poweroff' >"$ROOT/etc/acpi/PWRF/00000080"
chmod 0755 "$ROOT/etc/acpi/PWRF/00000080"

# /init: PID 1. Must never exit (the kernel panics if PID 1 dies).
cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# Otherix test image init (busybox ash).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1

say() { echo "otherix-test-image: $*"; }

# Shutdown. busybox poweroff / reboot / halt without -f signal PID 1 with
# SIGUSR2 / SIGTERM / SIGUSR1 (the power button handler runs poweroff). PID 1
# only receives signals it handles; ash runs a trap between two commands or
# by interrupting `wait`, hence the traps are set this early and getty runs
# in the background at the end.

# Succeeds while a process other than PID 1 still runs a program (kernel
# threads and zombies have no /proc/<pid>/exe). Builtins only: no fork.
user_processes_left() {
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = 1 ] && continue
    [ -e "$d/exe" ] && return 0
  done
  return 1
}

# $1: poweroff | reboot | halt. SIGTERM + SIGHUP (login shells ignore TERM)
# to every process, up to 2 s for them to exit, SIGKILL to the rest, sync,
# then the reboot(2) system call through `$1 -f`.
shutdown_guest() {
  trap '' USR1 USR2 TERM
  say "shutdown: $1"
  kill -TERM -1 2>/dev/null
  kill -HUP -1 2>/dev/null
  n=0
  while [ "$n" -lt 20 ] && user_processes_left; do
    sleep 0.1
    n=$((n + 1))
  done
  kill -KILL -1 2>/dev/null
  umount /mnt/seed 2>/dev/null
  sync
  "$1" -f
  say "warning: $1 -f failed"
  set_shutdown_traps
}
set_shutdown_traps() {
  trap 'shutdown_guest poweroff' USR2
  trap 'shutdown_guest reboot' TERM
  trap 'shutdown_guest halt' USR1
}
set_shutdown_traps

# Storage, ISO 9660 and power button modules, in dependency order.
while read -r mod; do
  insmod "/lib/modules/$mod" || say "warning: insmod $mod failed"
done </lib/modules/load-order

# The power button (see /etc/acpid.conf). acpid opens /dev/input/event0, 1,
# ... that exist when it starts, so it starts after the modules. It
# daemonizes; its log is /var/log/acpid.log.
if [ -e /dev/input/event0 ]; then
  acpid || say "warning: acpid failed"
else
  say "warning: no /dev/input/event0: the ACPI power button is ignored"
fi

# Return success if block device $1 holds an ISO 9660 filesystem whose
# volume id is "cidata" (any case). The primary volume descriptor is sector
# 16 (2048-byte sectors): "CD001" at byte 1, the 32-byte volume id at 40.
is_cidata_iso() {
  magic=$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)
  [ "$magic" = CD001 ] || return 1
  label=$(dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000' |
    tr '[:upper:]' '[:lower:]')
  [ "$label" = cidata ]
}

# Block devices appear asynchronously: retry for ~20 s.
find_seed() {
  tries=0
  while [ "$tries" -lt 40 ]; do
    for dev in /dev/sr* /dev/vd* /dev/sd*; do
      [ -b "$dev" ] || continue
      is_cidata_iso "$dev" || continue
      if mount -t iso9660 -o ro "$dev" /mnt/seed 2>/dev/null; then
        if [ -f /mnt/seed/meta-data ] && [ -f /mnt/seed/user-data ]; then
          SEED_DEV=$dev
          return 0
        fi
        umount /mnt/seed
      fi
    done
    tries=$((tries + 1))
    sleep 0.5
  done
  return 1
}

# Value of "local-hostname:" in meta-data: whitespace and one level of
# quotes stripped; for unquoted values a trailing " # comment" is dropped.
read_hostname() {
  v=$(sed -n 's/^[[:space:]]*local-hostname[[:space:]]*:[[:space:]]*//p' /mnt/seed/meta-data |
    head -n 1 | sed 's/[[:space:]]*$//')
  case "$v" in
    \"*\") v=${v#\"}; v=${v%\"} ;;
    \'*\') v=${v#\'}; v=${v%\'} ;;
    *) v=$(printf '%s\n' "$v" | sed 's/[[:space:]][[:space:]]*#.*$//') ;;
  esac
  printf '%s' "$v"
}

SEED_DEV=""
find_seed
# From here on keep kernel messages off the console so that they cannot
# split the result lines or the login prompt (use `dmesg` after logging in).
dmesg -n 1

HOSTNAME_VALUE=""
if [ -n "$SEED_DEV" ]; then
  HOSTNAME_VALUE=$(read_hostname)
  say "hostname=$HOSTNAME_VALUE"
  grep 'otherix-marker:' /mnt/seed/user-data | while IFS= read -r line; do
    m=${line#*otherix-marker:}
    m=$(printf '%s\n' "$m" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    say "marker=$m"
  done
else
  say "no cidata seed found"
fi

[ -n "$HOSTNAME_VALUE" ] || HOSTNAME_VALUE=$(cat /etc/hostname)
hostname "$HOSTNAME_VALUE"
echo "$HOSTNAME_VALUE" >/etc/hostname

# Networks: configure the NICs the seed's network-config names (see the header
# and /etc/netcfg.awk). A NIC appears once virtio_net probed it: wait up to
# ~10 s for its MAC.
ip link set dev lo up
iface_of() {
  for f in /sys/class/net/*/address; do
    [ "$(cat "$f")" = "$1" ] && { basename "$(dirname "$f")"; return 0; }
  done
  return 1
}
if [ -n "$SEED_DEV" ] && [ -f /mnt/seed/network-config ]; then
  awk -f /etc/netcfg.awk /mnt/seed/network-config >/tmp/netcfg
  while read -r nic mac mtu dhcp addrs routes gw dns; do
    n=0
    while ! ifc=$(iface_of "$mac") && [ "$n" -lt 40 ]; do sleep 0.25; n=$((n + 1)); done
    if [ -z "$ifc" ]; then say "net $nic: no interface with MAC $mac"; continue; fi
    [ "$mtu" != - ] && ip link set dev "$ifc" mtu "$mtu"
    ip link set dev "$ifc" up
    if [ "$dhcp" = true ]; then
      OTHERIX_NIC=$nic udhcpc -i "$ifc" -s /etc/udhcpc/script -b -t 10 -T 2 >/dev/null 2>&1
      continue
    fi
    [ "$addrs" != - ] && for a in $(echo "$addrs" | tr , ' '); do ip addr add "$a" dev "$ifc"; done
    [ "$gw" != - ] && ip route replace default via "$gw" dev "$ifc"
    [ "$routes" != - ] && for r in $(echo "$routes" | tr , ' '); do
      to=${r%%>*}
      case "$to" in 0.0.0.0/0 | default) to=default ;; esac
      ip route replace "$to" via "${r#*>}" dev "$ifc"
    done
    [ "$dns" != - ] && for d in $(echo "$dns" | tr , ' '); do echo "nameserver $d"; done \
      >/etc/resolv.conf
    say "net $nic $ifc $mac $addrs"
  done </tmp/netcfg
fi

# cloud-init readiness (agent/cloud_init.ts reads these lines on the serial
# console). Once everything above processed the seed, print what cloud-init
# prints when it ends: its final line, preceded by its error lines when the
# user-data says "otherix-fail-cloud-init: true"; and one line per SSH key in
# the user-data (type and comment), so tests see the merged keys arrive.
if [ -n "$SEED_DEV" ]; then
  grep -oE '(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+) [A-Za-z0-9+/=]+( [^"]*)?' \
    /mnt/seed/user-data | while read -r ktype _kdata kcomment; do
    say "ssh-authorized-key=$ktype ${kcomment:-}"
  done
  ci_date=$(date -u '+%a, %d %b %Y %H:%M:%S +0000')
  if grep -qE '^[[:space:]]*otherix-fail-cloud-init:[[:space:]]*true' /mnt/seed/user-data; then
    echo "Cloud-init v. 0.0-otherix-test running 'modules:final' at $ci_date. ERROR: otherix-fail-cloud-init is set"
    echo "util.py[WARNING]: Failed to run module otherix-test (otherix-fail-cloud-init: true)"
  fi
  echo "Cloud-init v. 0.0-otherix-test finished at $ci_date. Datasource DataSourceNoCloud."
fi

# Respawn a login prompt on the serial console forever. getty runs in the
# background so that a shutdown signal interrupts `wait` at once.
while :; do
  getty -L 115200 ttyS0 vt100 &
  wait $!
  sleep 1
done
EOF
chmod 0755 "$ROOT/init"

# Pack it: newc cpio (owned by root, fixed mtimes), gzip.
INITRD="$WORK/initrd.gz"
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
  gzip -9 -n >"$INITRD"

# ---------------------------------------------------------------------------
# Stage 6: FAT16 partition image with syslinux, written with mtools only.
# ---------------------------------------------------------------------------
cat >"$WORK/syslinux.cfg" <<'EOF'
SERIAL 0 115200
DEFAULT otherix
PROMPT 0
TIMEOUT 0
LABEL otherix
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200n8 panic=10
EOF

export MTOOLS_SKIP_CHECK=1
# Reproducible FAT timestamps: mtools stamps every entry with "now", which
# it takes from SOURCE_DATE_EPOCH (default 2000-01-01T00:00:00Z) in UTC.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-946684800} TZ=UTC
PART_START=2048 # sectors (1 MiB alignment)
content_bytes=$(($(stat -c %s "$VMLINUZ") + $(stat -c %s "$INITRD") + 256 * 1024))
# Total image size in MiB: at least 32, else content + ~4 MiB of slack.
DISK_MIB=$(((content_bytes + 5 * 1048576 - 1) / 1048576))
((DISK_MIB >= 32)) || DISK_MIB=32
DISK_SECTORS=$((DISK_MIB * 2048))
PART_SECTORS=$((DISK_SECTORS - PART_START))

PART="$WORK/part.img"
truncate -s $((PART_SECTORS * 512)) "$PART"
# -H: hidden sectors = partition offset, needed by the syslinux boot sector.
mformat -i "$PART" -T "$PART_SECTORS" -h 255 -s 63 -H "$PART_START" \
  -v OTHERIX -N 4f545852 ::
# Installs ldlinux.sys + ldlinux.c32 and the FAT boot sector (via mtools).
syslinux --install "$PART"
mcopy -i "$PART" "$WORK/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$PART" "$VMLINUZ" ::/vmlinuz
mcopy -i "$PART" "$INITRD" ::/initrd.gz
mdir -i "$PART" -a :: >&2

# ---------------------------------------------------------------------------
# Stage 7: assemble the disk: syslinux MBR code, one partition entry, the
# partition contents at sector 2048.
# ---------------------------------------------------------------------------
DISK="$WORK/disk.img"
truncate -s $((DISK_SECTORS * 512)) "$DISK"
dd if="$SYSLINUX_MBR" of="$DISK" bs=440 count=1 conv=notrunc status=none

le32() { # little-endian 32-bit value as \xHH escapes
  printf '\\x%02x\\x%02x\\x%02x\\x%02x' \
    $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255))
}
chs() { # CHS address of LBA $1 (255 heads, 63 sectors) as \xHH escapes
  local c=$(($1 / (255 * 63))) h=$((($1 / 63) % 255)) s=$(($1 % 63 + 1))
  if ((c > 1023)); then c=1023 h=254 s=63; fi
  printf '\\x%02x\\x%02x\\x%02x' "$h" $(((s & 63) | ((c >> 2) & 192))) $((c & 255))
}
{
  printf '%b' "$(le32 0x4f545852)\\x00\\x00"                     # disk signature
  printf '%b' "\\x80$(chs "$PART_START")"                          # entry 1: active,
  printf '%b' "\\x0e$(chs $((DISK_SECTORS - 1)))"                  # FAT16 (LBA),
  printf '%b' "$(le32 "$PART_START")$(le32 "$PART_SECTORS")"       # start, size
  head -c 48 /dev/zero                                             # entries 2-4
  printf '%b' '\x55\xaa'                                           # boot signature
} | dd of="$DISK" bs=1 seek=440 conv=notrunc status=none
dd if="$PART" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none

# ---------------------------------------------------------------------------
# Stage 8: publish atomically: image, checksum, stamp.
# ---------------------------------------------------------------------------
sha256sum "$DISK" | cut -d' ' -f1 >"$WORK/sha256"
rm -f "$STAMP"
mv -f "$DISK" "$IMAGE"
mv -f "$WORK/sha256" "$IMAGE.sha256"
{
  printf 'script-sha256 %s\n' "$SCRIPT_SHA"
  printf 'kernel %s (%s)\n' "$KVER" "$KERNEL_SOURCE"
  printf 'busybox %s\n' "$BB_VERSION"
  printf 'syslinux %s\n' \
    "$(dpkg-query -W -f='${Version}' syslinux-common 2>/dev/null || echo unknown)"
} >"$STAMP"
log "built $IMAGE ($(du -h --apparent-size "$IMAGE" | cut -f1), sha256 $(cat "$IMAGE.sha256"))"
printf '%s\n' "$IMAGE"
