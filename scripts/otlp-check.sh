#!/usr/bin/env bash
# The hub's optional OpenTelemetry export (cargo feature `otlp`): lints it and runs
# hub/tests/otlp.rs, which starts a hub process with OTEL_EXPORTER_OTLP_ENDPOINT
# pointing at a stand-in collector and checks that an edit's spans arrive over
# OTLP/HTTP. Needs PostgreSQL on 127.0.0.1:5432 (like the other hub tests).
# .ci/run lints the feature on every run; this script adds the end-to-end test
# (about two more minutes of build on a 2-core machine).
#
#   scripts/otlp-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
cargo clippy -p flowhub --features otlp --all-targets --locked -- -D warnings
cargo test -p flowhub --features otlp --locked --test otlp
