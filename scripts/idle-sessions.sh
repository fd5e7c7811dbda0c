#!/usr/bin/env bash
# What an idle subscribed session and a large-flow open cost the hub, per transport
# (issue #13), each on a fresh `flowhub serve` (embedded default, SQLite in a temp dir).
#
#   scripts/idle-sessions.sh [--transports ws,automerge-repo] [--sessions 2000]
#                            [--flows 100] [--opens 20] [--nodes 1000] [--no-open | --no-idle]
#                            [--client-busy-ms MS] [--hold-ms MS] [--callgrind]
#
# Per transport: `loadtest/peers/idle.mjs` (the hub's RSS delta per session, from
# /proc) and `idle.mjs --mode open` (hub CPU per open of a --nodes flow), each
# printing one JSON line. For where the bytes go, run the hub under `heaptrack` and
# read its peak consumers (docs/PERFORMANCE.md, "Fifth round").
#
# The open's CPU time depends on the client too: it shares the two cores with the
# hub, and a stock Repo works ~4x longer per open than the native client. Two
# controls (docs/PERFORMANCE.md, "Seventh round"): --client-busy-ms keeps each
# opening client busy that long before it leaves; --callgrind runs the open hubs
# under `valgrind --tool=callgrind` and reports the hub's instructions per open
# (a count, repeatable to a few per cent; slow, so use fewer --opens). The hub's
# timers run while a client stays, so a slower client costs it more: --hold-ms keeps
# every open connected that long (say 250 under --callgrind, where a Repo's open
# takes ~100 ms and a native one ~20 ms) to compare the transports at equal time. With
# CALLGRIND_KEEP=DIR the dumps stay in DIR/<transport> for callgrind_annotate.
#
# Environment: FLOWHUB_BIN (default target/release/flowhub), NODE (default node).
# Needs clients/js built (npm run build) and loadtest/peers installed (npm ci); the
# script installs both when missing. Never builds the Rust binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

transports=ws,automerge-repo
sessions=2000
flows=100
opens=20
nodes=1000
open=1
idle=1
client_busy=0
hold=0
callgrind=0
while [ $# -gt 0 ]; do
  case "$1" in
    --transports) transports=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --opens) opens=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --no-open) open=0; shift ;;
    --no-idle) idle=0; shift ;;
    --client-busy-ms) client_busy=$2; shift 2 ;;
    --hold-ms) hold=$2; shift 2 ;;
    --callgrind) callgrind=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

FLOWHUB_BIN=${FLOWHUB_BIN:-$ROOT/target/release/flowhub}
NODE=${NODE:-node}
PEERS=$ROOT/loadtest/peers
[ -x "$FLOWHUB_BIN" ] || { echo "$FLOWHUB_BIN is missing: cargo build --release -p flowhub" >&2; exit 1; }
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
[ -d clients/js/dist ] || (cd clients/js && npm ci && npm run build)
[ -d "$PEERS/node_modules" ] || (cd "$PEERS" && npm ci)
export FLOWHUB_JWT_SECRET=${FLOWHUB_JWT_SECRET:-idle-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
# Sessions hold one descriptor each on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$NODE" -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# start_hub [wrapper...]: a fresh hub on the embedded default, run by the wrapper.
start_hub() {
  local port data
  port=$(free_port)
  data=$(mktemp -d -p "$WORK")
  FLOWHUB_DATABASE_URL= FLOWHUB_REDIS_URL= RUST_LOG=warn \
    "$@" "$FLOWHUB_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" > "$WORK/hub.log" 2>&1 &
  SERVER_PID=$!
  URL=ws://127.0.0.1:$port
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$WORK/hub.log" >&2
  return 1
}

stop_hub() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

IFS=, read -r -a list <<< "$transports"
for t in "${list[@]}"; do
  if [ "$idle" = 1 ]; then
    start_hub
    "$NODE" "$PEERS/idle.mjs" --url "$URL" --server-pid "$SERVER_PID" --transport "$t" \
      --sessions "$sessions" --flows "$flows" --out "$WORK/idle-$t.json"
    stop_hub
  fi
  if [ "$open" = 1 ]; then
    extra=(--client-busy-ms "$client_busy" --hold-ms "$hold")
    if [ "$callgrind" = 1 ]; then
      if [ -n "${CALLGRIND_KEEP:-}" ]; then cg=$CALLGRIND_KEEP/$t; mkdir -p "$cg"; else cg=$(mktemp -d -p "$WORK"); fi
      start_hub valgrind --tool=callgrind "--callgrind-out-file=$cg/callgrind.out.%p"
      extra+=(--callgrind-out "$cg")
    else
      start_hub
    fi
    "$NODE" "$PEERS/idle.mjs" --mode open --url "$URL" --server-pid "$SERVER_PID" --transport "$t" \
      --nodes "$nodes" --opens "$opens" "${extra[@]}" --out "$WORK/open-$t.json"
    stop_hub
  fi
done
