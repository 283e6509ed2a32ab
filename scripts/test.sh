#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh) and runs the whole test suite: formatting, lint,
# type check, unit tests, real-process tests and the end-to-end VM test (real otherix-api,
# otherix-agent, otherix CLI and QEMU booting the offline test image).
# Ends with the summary line "N passed, N failed". Exit code 0 only when everything passed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

OTHERIX_SETUP_TESTS=1 "$REPO/scripts/setup.sh"

echo ">> building the offline test image (cached)"
"$REPO/scripts/build-test-image.sh" >/dev/null

echo ">> deno fmt --check / deno lint / deno check"
deno fmt --check
deno lint
deno task -q check

echo ">> deno test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# `deno task check` above type-checked every test with the rest of the tree: no second pass.
# Two test files at a time (one per core: QEMU boots in one overlap the mostly waiting
# real-process tests in the other).
DENO_JOBS=2 deno test --no-check --parallel --allow-all --unstable-kv test/ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# deno prints "ok | 12 passed | 0 failed (…)" / "FAILED | 11 passed | 1 failed (…)".
summary="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -n 1)"
passed="$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")"
failed="$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")"
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
