#!/usr/bin/env bash
# The web side's tests: @flowhub/client (vitest, against real hub processes, including
# an unmodified automerge-repo Repo), the committed demo bundle being up to date, and
# the demo page in two Chromium pages (Playwright, playwright-core + Debian's chromium).
#
# Installs what it needs: npm packages with `npm ci`, Chromium with apt when
# /usr/bin/chromium is missing. Bounded in time (WEB_TEST_TIMEOUT, default 20 min).
# Screenshots and the drag -> paint latency land in target/web/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT=${WEB_TEST_TIMEOUT:-1200}
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

step() { echo; echo "== web: $*"; }

step "build the hub and the Rust CLI"
# The whole workspace, like scripts/test.sh: the same feature set reuses its artifacts.
timeout "$LIMIT" cargo build --workspace --all-targets --locked

step "chromium"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  timeout "$LIMIT" apt-get update -qq
  timeout "$LIMIT" apt-get install -y -qq chromium >/dev/null
fi
"${CHROMIUM:-/usr/bin/chromium}" --version

step "npm ci (clients/js, hub/tests/web)"
(cd clients/js && timeout "$LIMIT" npm ci --no-audit --no-fund --loglevel=error)
(cd hub/tests/web && timeout "$LIMIT" npm ci --no-audit --no-fund --loglevel=error)

step "typecheck @flowhub/client"
(cd clients/js && timeout "$LIMIT" npx tsc -p tsconfig.json --noEmit)

step "the committed demo bundle is up to date (hub/static/app.js)"
(cd clients/js && timeout "$LIMIT" node scripts/build-demo.mjs --check)

step "vitest: @flowhub/client and automerge-repo against a real hub"
(cd clients/js && timeout "$LIMIT" npx vitest run)

step "playwright: the demo page in two browsers"
mkdir -p "$ROOT/target/web"
(cd hub/tests/web && timeout "$LIMIT" node --test --test-reporter=spec demo.test.mjs)

echo
echo "web tests passed; screenshots in target/web/"
