#!/usr/bin/env bash
# The main job, on one machine, offline: set up, start otherix-api (embedded store), join an
# otherix-agent with a join token, create a VM from an image URL that boots under QEMU (KVM when
# usable, TCG otherwise), show it `running` in `otherix vm list`, and print the tail of its
# serial console with the line proving cloud-init data reached the guest.
#
# Usage:
#   scripts/demo.sh                          # offline: builds + serves the test image
#   scripts/demo.sh --image-url URL [--arch amd64|arm64] [--memory-mb N]   # any cloud image
#   scripts/demo.sh down                     # stop the demo (VMs, agent, api) and keep logs
#
# Everything lives under .local/demo/ (its own /etc/otherix, /var/lib/otherix, /run/otherix
# roots); nothing outside the repository is touched except packages installed by setup.sh.
# Ports (override with env): API 18080, agent-facing 18443, agent 19443, image server 18081.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$REPO/.local/demo"
ROOT="$DEMO/root"
API_PORT="${OTHERIX_DEMO_API_PORT:-18080}"
AGENT_API_PORT="${OTHERIX_DEMO_AGENT_API_PORT:-18443}"
AGENT_PORT="${OTHERIX_DEMO_AGENT_PORT:-19443}"
IMG_PORT="${OTHERIX_DEMO_IMAGE_PORT:-18081}"
NODE="node-demo"
VM="demo-vm"
ADMIN_EMAIL="admin@otherix.local"
ADMIN_PASSWORD="correct-horse-battery-staple"
export OTHERIX_CONFIG="$DEMO/cli-config"

say() { printf '\n\033[1m>> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

otx() { (cd "$REPO" && deno task -q otherix -- "$@"); }

stop_demo() {
  # QEMU runs daemonized and outlives the agent by design: stop the demo's VMs through their
  # locked pidfiles (never a recycled pid), then the daemons.
  local qpid
  for qpid in "$ROOT"/run/otherix/vms/*/qemu.pid; do
    [ -f "$qpid" ] && pkill -KILL -F "$qpid" -L 2>/dev/null || true
  done
  for name in agent api images; do
    local pidfile="$DEMO/$name.pid"
    [ -f "$pidfile" ] || continue
    local pid; pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "down" ]; then
  stop_demo
  echo "demo stopped (logs kept in $DEMO/*.log)"
  exit 0
fi

IMAGE_URL=""; ARCH="amd64"; MEMORY_MB=""
while [ $# -gt 0 ]; do
  case "$1" in
    --image-url) IMAGE_URL="$2"; shift 2 ;;
    --arch) ARCH="$2"; shift 2 ;;
    --memory-mb) MEMORY_MB="$2"; shift 2 ;;
    *) die "unknown argument: $1 (see the usage at the top of $0)" ;;
  esac
done

say "setup (Deno, Debian packages, npm dependencies)"
"$REPO/scripts/setup.sh"

say "stopping any previous demo and resetting its state"
stop_demo
rm -rf "$ROOT" "$OTHERIX_CONFIG"
mkdir -p "$ROOT/etc/otherix" "$ROOT/var/lib/otherix/api" "$ROOT/run/otherix" "$DEMO"

SHA_FLAG=()
if [ -z "$IMAGE_URL" ]; then
  say "building the offline test image (cached after the first run)"
  IMG="$("$REPO/scripts/build-test-image.sh" | tail -n 1)"
  IMAGE_URL="http://127.0.0.1:$IMG_PORT/$(basename "$IMG")"
  SHA_FLAG=(--image-sha256 "$(cut -d' ' -f1 < "$IMG.sha256")")
  MEMORY_MB="${MEMORY_MB:-256}"
  setsid deno run --allow-net=127.0.0.1 --allow-read="$(dirname "$IMG")" \
    "$REPO/scripts/serve_images.ts" "$(dirname "$IMG")" "$IMG_PORT" \
    >"$DEMO/images.log" 2>&1 &
  echo $! >"$DEMO/images.pid"
  say "serving $IMG at $IMAGE_URL"
fi
MEMORY_MB="${MEMORY_MB:-1024}"

cat >"$ROOT/etc/otherix/api.yaml" <<YAML
server:
  listen: "127.0.0.1:$API_PORT"
  agent_listen: "127.0.0.1:$AGENT_API_PORT"
store:
  data_dir: "$ROOT/var/lib/otherix/api"
nodes:
  heartbeat_interval_seconds: 5
  stale_threshold_seconds: 30
storage_pools:
  allowed_path_prefixes: ["$ROOT/var/lib/otherix/pools/"]
images:
  url_policy:
    allow_loopback: true   # the demo serves its image from 127.0.0.1
YAML
cat >"$ROOT/etc/otherix/agent.yaml" <<YAML
paths:
  config_dir: "$ROOT/etc/otherix"
  state_dir: "$ROOT/var/lib/otherix"
  run_dir: "$ROOT/run/otherix"
server:
  listen: "127.0.0.1:$AGENT_PORT"
  advertise_url: "https://127.0.0.1:$AGENT_PORT"
heartbeat:
  interval_seconds: 5
images:
  url_policy:
    allow_loopback: true   # the demo serves its image from 127.0.0.1
YAML

say "starting otherix-api on :$API_PORT (embedded store, first boot creates the cluster CA)"
(cd "$REPO"
  OTHERIX_BOOTSTRAP_ADMIN_EMAIL="$ADMIN_EMAIL" OTHERIX_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    setsid deno task -q otherix-api -- --config "$ROOT/etc/otherix/api.yaml" >"$DEMO/api.log" 2>&1 &
  echo $! >"$DEMO/api.pid")
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null || { tail -n 30 "$DEMO/api.log"; die "otherix-api did not become ready"; }

say "otherix config add cluster"
otx config add cluster --name demo --server "http://127.0.0.1:$API_PORT" \
  --login "$ADMIN_EMAIL" --password "$ADMIN_PASSWORD"

say "otherix node join-token create --node-name $NODE"
JOIN_JSON="$(otx node join-token create --node-name "$NODE" --ttl 10m -o json)"
json() { deno eval "const j = JSON.parse(Deno.args[0]); console.log(j.$1)" "$JOIN_JSON"; }
TOKEN="$(json token)"
FPR="$(json ca_fingerprint)"
echo "CA fingerprint: $FPR"
umask 077
printf '%s\n' "$TOKEN" >"$ROOT/etc/otherix/bootstrap-token"
umask 022
cat >"$ROOT/etc/otherix/bootstrap.env" <<ENV
OTHERIX_BOOTSTRAP__CP_URL=https://127.0.0.1:$AGENT_API_PORT
OTHERIX_BOOTSTRAP__CA_FINGERPRINT=$FPR
OTHERIX_BOOTSTRAP__NODE_NAME=$NODE
ENV

say "starting otherix-agent (bootstrap: pinned CA, CSR, mTLS)"
(cd "$REPO"
  setsid deno task -q otherix-agent -- --config "$ROOT/etc/otherix/agent.yaml" \
  >"$DEMO/agent.log" 2>&1 &
  echo $! >"$DEMO/agent.pid")
for _ in $(seq 1 120); do
  otx node list -o json 2>/dev/null | grep -q '"status": "ready"' && break
  sleep 1
done
otx node list
otx node list -o json | grep -q '"status": "ready"' || { tail -n 30 "$DEMO/agent.log"; die "node did not become ready"; }
grep -o '"msg":"accelerator[^"]*"' "$DEMO/agent.log" | head -n 1 || true
for _ in $(seq 1 60); do   # the default pool is provisioned when the node turns ready
  otx pool list -o json 2>/dev/null | grep -q '"status": "ready"' && break
  sleep 0.5
done

MARKER="cloud-init-data-reached-the-guest-$(date +%s)"
cat >"$DEMO/user-data.yaml" <<UD
#cloud-config
# otherix-marker: $MARKER
UD
if [ ${#SHA_FLAG[@]} -eq 0 ]; then
  # A real cloud image runs cloud-init: have it print the marker on the serial console.
  cat >>"$DEMO/user-data.yaml" <<UD
runcmd:
  - [sh, -c, "echo otherix-marker: $MARKER > /dev/ttyS0"]
UD
fi

say "otherix vm create $VM --image-url $IMAGE_URL --wait"
otx vm create "$VM" --image-url "$IMAGE_URL" "${SHA_FLAG[@]}" --arch "$ARCH" \
  --vcpus 1 --memory-mb "$MEMORY_MB" --disk-gib 2 --user-data "@$DEMO/user-data.yaml" --wait

say "otherix vm list"
otx vm list

say "waiting for the guest to print the cloud-init marker on its serial console"
for _ in $(seq 1 300); do
  otx vm logs "$VM" 2>/dev/null | grep -q "$MARKER" && break
  sleep 2
done
say "otherix vm logs $VM (tail)"
otx vm logs "$VM" | tail -n 15
otx vm logs "$VM" | grep -q "$MARKER" || die "the marker did not appear on the serial console"
echo
echo "OK: $VM is running and its serial console shows: $(otx vm logs "$VM" | grep -m1 "$MARKER" | tr -d '\r')"
cat <<MSG

The demo keeps running. Try (with OTHERIX_CONFIG=$OTHERIX_CONFIG):
  deno task otherix -- vm get $VM
  deno task otherix -- vm console $VM            # log in as root; Ctrl+] detaches
  deno task otherix -- vm stop $VM --wait        # ACPI power button
  deno task otherix -- vm start $VM --wait
  deno task otherix -- vm get $VM --watch        # follows changes; Ctrl+C ends it
  deno task otherix -- vm delete $VM --force --wait
Browser console: http://127.0.0.1:$API_PORT/console/$VM (log in as $ADMIN_EMAIL)
Logs: $DEMO/{api,agent}.log    Stop everything: scripts/demo.sh down
MSG
