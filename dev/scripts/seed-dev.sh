#!/usr/bin/env bash
# seed-dev (spec 001 "Step 1 — run seed-dev"): CLI cluster, join token, bootstrap files on the
# agent host, agent start, wait for the node. The work is in dev/scripts/seed.ts; settings in
# dev/scripts/env.ts (OTHERIX_CP_URL, OTHERIX_BOOTSTRAP_ADMIN_EMAIL / _PASSWORD, …).
set -euo pipefail
exec deno run --allow-all "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dev.ts" seed-dev "$@"
