#!/usr/bin/env bash
# Runs every test of the workspace. Needs PostgreSQL on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379 (tests that need them fail, never skip, when they are down).
set -euo pipefail
cd "$(dirname "$0")/.."
# Benches and examples must keep compiling even though only CI's test profile runs.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked
