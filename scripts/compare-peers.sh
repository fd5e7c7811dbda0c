#!/usr/bin/env bash
# flowhub vs Hocuspocus (Yjs) on the same workload (issue #14), side by side.
#
#   scripts/compare-peers.sh [--rate 10] [--duration 20] [--ramp-up 3] [--quick]
#                            [--sides flowhub,hocuspocus,sqlite] [--reinstall]
#                            [--results DIR (default loadtest/results)]
#
# The workload: 10 flows × 5 editors, each moving its own node R times a second, every
# edit timed until every other editor of its flow has it (loadtest/peers/edit.mjs and
# flowhub-loadtest's `edit` scenario). Each run gets a fresh server:
#   flowhub      `flowhub serve` on the embedded default (SQLite in a temp dir), measured
#                with BOTH the Rust harness (`flowhub-loadtest edit`) and
#                `edit.mjs --backend flowhub` (@flowhub/client in Node);
#   hocuspocus   a stock Hocuspocus 3 server in memory, `edit.mjs --backend hocuspocus`;
#   sqlite       the same with @hocuspocus/extension-sqlite.
# The server's CPU (utime + stime of its PID alone) and the client's are sampled from
# /proc every ~100 ms and taken over the load phase. Unless --quick, also: open-large
# (20 fresh clients open a 1,000-node flow), burst (1,000 back-to-back inserts: the
# flowhub client, a stock automerge-repo Repo, Hocuspocus) and apply-bench.
#
# Writes loadtest/results/compare-r{RATE}.md (also printed) and the raw JSON next to it
# (loadtest/results/compare-r{RATE}/). Exits non-zero when a step fails (a check of a
# run, or a server that does not start); the table is written anyway.
#
# Environment: FLOWHUB_BIN (default target/release/flowhub), LOADTEST_BIN (default
# target/release/flowhub-loadtest), FLOWHUB_JWT_SECRET (default: a random one),
# NODE (default node), FLOWHUB_STREAM (on|off: @flowhub/client's `stream` option;
# default: the client's). Needs Node >= 20 and npm; never builds the Rust binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

rate=10
duration=20
ramp=3
quick=0
sides=flowhub,hocuspocus,sqlite
reinstall=0
results_dir=loadtest/results
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --ramp-up) ramp=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --sides) sides=$2; shift 2 ;;
    --reinstall) reinstall=1; shift ;;
    --results) results_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
has_side() { case ",$sides," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

FLOWHUB_BIN=${FLOWHUB_BIN:-$ROOT/target/release/flowhub}
LOADTEST_BIN=${LOADTEST_BIN:-$ROOT/target/release/flowhub-loadtest}
NODE=${NODE:-node}
PEERS=$ROOT/loadtest/peers
mkdir -p "$results_dir"
RESULTS=$(cd "$results_dir" && pwd)
RAW=$RESULTS/compare-r$rate
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
if [ -z "${FLOWHUB_JWT_SECRET:-}" ]; then
  FLOWHUB_JWT_SECRET=compare-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
export FLOWHUB_JWT_SECRET

step() { echo; echo "== compare-peers: $*"; }
# Prints a command (the secret is only ever passed through the environment), then runs it.
show() {
  local line
  line=$(printf '%q ' "$@")
  line=${line% }
  echo "+ $line"
  echo "${line//$ROOT\//}" >> "$WORK/commands.txt"
}
run() { show "$@"; "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare-peers.XXXXXX")
: > "$WORK/commands.txt"
: > "$WORK/manifest.tsv"
cleanup() {
  # Only this shell's own background jobs still running (servers, CPU samplers, a load
  # generator interrupted mid-run): never a PID that may have been reused.
  local pid
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# ---- prerequisites -------------------------------------------------------------------------

node_major=$("$NODE" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then echo "Node >= 20 is required (found: $("$NODE" -v 2>/dev/null || echo none))" >&2; exit 2; fi
if has_side flowhub; then
  for b in "$FLOWHUB_BIN" "$LOADTEST_BIN"; do
    if [ ! -x "$b" ]; then
      echo "$b is missing: cargo build --release -p flowhub -p flowhub-loadtest (or set FLOWHUB_BIN / LOADTEST_BIN)" >&2
      exit 2
    fi
  done
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

step "Node dependencies"
if [ ! -f clients/js/node_modules/.package-lock.json ] \
  || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then
  (cd clients/js && run npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -f clients/js/dist/index.js ] || [ -n "$(find clients/js/src -newer clients/js/dist/index.js -name '*.ts' | head -1)" ]; then
  (cd clients/js && run npm run build)
fi
# loadtest/peers installs @flowhub/client as a copy (.npmrc install-links), so that it
# shares one @automerge/automerge with the benchmarks: reinstall when the lock file is
# newer than the install or the installed copy of the client's dist differs.
if [ "$reinstall" = 1 ] || [ ! -f "$PEERS/node_modules/.package-lock.json" ] \
  || [ "$PEERS/package-lock.json" -nt "$PEERS/node_modules/.package-lock.json" ] \
  || ! diff -rq clients/js/dist "$PEERS/node_modules/@flowhub/client/dist" > /dev/null 2>&1; then
  (cd "$PEERS" && run npm ci --no-audit --no-fund --loglevel=error)
else
  echo "loadtest/peers/node_modules is up to date (--reinstall forces npm ci)"
fi

mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.cpu.txt

# ---- helpers ----------------------------------------------------------------------------------

free_port() { "$NODE" -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# Samples utime+stime (clock ticks) of PID into FILE every ~100 ms until it exits.
# Lines: `unix-seconds ticks`.
sample_cpu() {
  local pid=$1 file=$2 line rest
  local -a f
  while read -r line 2>/dev/null < "/proc/$pid/stat"; do
    rest=${line##*) }
    read -r -a f <<< "$rest"
    echo "$EPOCHREALTIME $(( f[11] + f[12] ))" >> "$file"
    sleep 0.1
  done
}
start_sampler() { sample_cpu "$1" "$2" & }

SERVER_PID=
SERVER_URL=
SERVER_NAME=
start_flowhub() {
  local name=$1 port data
  SERVER_NAME=$name
  port=$(free_port)
  data=$(mktemp -d "$WORK/flowhub-data.XXXXXX")
  show env FLOWHUB_JWT_SECRET=... FLOWHUB_DATABASE_URL= FLOWHUB_REDIS_URL= RUST_LOG=warn "$FLOWHUB_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data"
  FLOWHUB_DATABASE_URL= FLOWHUB_REDIS_URL= RUST_LOG=warn \
    "$FLOWHUB_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" > "$WORK/$name.server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL=ws://127.0.0.1:$port
  local i
  for i in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1; then
      echo "flowhub ready on $SERVER_URL (pid $SERVER_PID)"
      start_sampler "$SERVER_PID" "$WORK/$name.server.cpu"
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "flowhub did not become ready; its log:" >&2
  tail -20 "$WORK/$name.server.log" >&2
  exit 2
}

start_hocuspocus() {
  local name=$1 sqlite=${2:-} port
  SERVER_NAME=$name
  port=$(free_port)
  local -a cmd=("$NODE" "$PEERS/hocuspocus-server.mjs" --port "$port")
  if [ -n "$sqlite" ]; then cmd+=(--sqlite "$WORK/$name.sqlite"); fi
  show "${cmd[@]}"
  "${cmd[@]}" > "$WORK/$name.server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_URL=ws://127.0.0.1:$port
  local i
  for i in $(seq 1 300); do
    if grep -q '^ready' "$WORK/$name.server.log" 2>/dev/null; then
      echo "Hocuspocus ready on $SERVER_URL (pid $SERVER_PID)"
      start_sampler "$SERVER_PID" "$WORK/$name.server.cpu"
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "Hocuspocus did not become ready; its log:" >&2
  tail -20 "$WORK/$name.server.log" >&2
  exit 2
}

stop_server() {
  show kill "$SERVER_PID"
  kill "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  sleep 1
}

FAILED=()
# client KIND NAME LABEL JSON CMD...: runs a load generator in the background (so its
# CPU can be sampled too), waits for it, and records the step in the manifest.
client() {
  local kind=$1 name=$2 label=$3 json=$4
  shift 4
  show "$@"
  local rc=0 pid
  "$@" &
  pid=$!
  start_sampler "$pid" "$WORK/$name.client.cpu"
  wait "$pid" || rc=$?
  [ -f "$WORK/$name.client.cpu" ] && cp "$WORK/$name.client.cpu" "$RAW/$name.client.cpu.txt"
  local server_cpu=
  if [ -n "$SERVER_PID" ] && [ -f "$WORK/$SERVER_NAME.server.cpu" ]; then
    server_cpu=$RAW/$name.server.cpu.txt
    cp "$WORK/$SERVER_NAME.server.cpu" "$server_cpu"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$label" "$json" "$server_cpu" "$RAW/$name.client.cpu.txt" "$rc" >> "$WORK/manifest.tsv"
  if [ "$rc" != 0 ]; then
    echo "!! $label ($kind) exited $rc" >&2
    FAILED+=("$label ($kind): exit $rc")
  fi
}

edit_args=(--flows 10 --editors-per-flow 5 --rate "$rate" --duration "$duration" --ramp-up "$ramp")

# ---- the edit workload ---------------------------------------------------------------------

if has_side flowhub; then
  step "flowhub, Rust harness (flowhub-loadtest edit), R=$rate/s for $duration s"
  start_flowhub fh-rust
  client rust-edit fh-rust "flowhub (flowhub-loadtest, Rust client)" "$RAW/flowhub-rust.json" \
    "$LOADTEST_BIN" edit --targets "$SERVER_URL" --editors 50 --flows 10 --edit-rate "$rate" \
    --duration "${duration}s" --ramp-up "${ramp}s" --no-progress --out "$RAW/flowhub-rust.json"
  stop_server

  step "flowhub, Node (edit.mjs --backend flowhub, @flowhub/client), R=$rate/s for $duration s"
  start_flowhub fh-node
  client node-edit fh-node "flowhub (edit.mjs, @flowhub/client)" "$RAW/flowhub-node.json" \
    "$NODE" "$PEERS/edit.mjs" --backend flowhub --url "$SERVER_URL" "${edit_args[@]}" \
    --server-pid "$SERVER_PID" --out "$RAW/flowhub-node.json"
  stop_server
fi
if has_side hocuspocus; then
  step "Hocuspocus in memory (edit.mjs --backend hocuspocus), R=$rate/s for $duration s"
  start_hocuspocus hp-mem
  client node-edit hp-mem "Hocuspocus 3, in memory (edit.mjs, Yjs)" "$RAW/hocuspocus-memory.json" \
    "$NODE" "$PEERS/edit.mjs" --backend hocuspocus --url "$SERVER_URL" "${edit_args[@]}" \
    --server-pid "$SERVER_PID" --out "$RAW/hocuspocus-memory.json"
  stop_server
fi
if has_side sqlite; then
  step "Hocuspocus + SQLite extension (edit.mjs --backend hocuspocus), R=$rate/s for $duration s"
  start_hocuspocus hp-sqlite sqlite
  client node-edit hp-sqlite "Hocuspocus 3 + SQLite (edit.mjs, Yjs)" "$RAW/hocuspocus-sqlite.json" \
    "$NODE" "$PEERS/edit.mjs" --backend hocuspocus --url "$SERVER_URL" "${edit_args[@]}" \
    --server-pid "$SERVER_PID" --out "$RAW/hocuspocus-sqlite.json"
  stop_server
fi

# ---- open-large, burst, apply-bench ------------------------------------------------------------

if [ "$quick" = 0 ]; then
  if has_side flowhub; then
    step "flowhub: open a 1,000-node flow ×20, then the 1,000-insert burst (client and stock Repo)"
    start_flowhub fh-extra
    client open fh-open "flowhub (@flowhub/client)" "$RAW/open-flowhub.json" \
      "$NODE" "$PEERS/open-large.mjs" --backend flowhub --url "$SERVER_URL" --server-pid "$SERVER_PID" --out "$RAW/open-flowhub.json"
    client burst fh-burst "flowhub" "$RAW/burst-flowhub.json" \
      "$NODE" "$PEERS/burst.mjs" --url "$SERVER_URL" --out "$RAW/burst-flowhub.json"
    stop_server
  fi
  if has_side hocuspocus; then
    step "Hocuspocus: open a 1,000-node document ×20, then the 1,000-insert burst"
    start_hocuspocus hp-extra
    client open hp-open "Hocuspocus 3, in memory" "$RAW/open-hocuspocus.json" \
      "$NODE" "$PEERS/open-large.mjs" --backend hocuspocus --url "$SERVER_URL" --server-pid "$SERVER_PID" --out "$RAW/open-hocuspocus.json"
    client burst hp-burst "Hocuspocus" "$RAW/burst-hocuspocus.json" \
      "$NODE" "$PEERS/burst.mjs" --hocuspocus-url "$SERVER_URL" --out "$RAW/burst-hocuspocus.json"
    stop_server
  fi
  step "apply-bench: one remote move on a 1,000-node flow, in Node"
  client apply apply "apply-bench" "$RAW/apply-bench.json" \
    "$NODE" "$PEERS/apply-bench.mjs" --applies 1000 --out "$RAW/apply-bench.json"
fi

# ---- the table ----------------------------------------------------------------------------------

step "report"
report=$RESULTS/compare-r$rate.md
run "$NODE" "$PEERS/report.mjs" --manifest "$WORK/manifest.tsv" --rate "$rate" \
  --commands "$WORK/commands.txt" --out "$report" --summary "$RAW/summary.json"
echo
echo "written: $report and $RAW/"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "FAILED steps:" >&2
  printf '  %s\n' "${FAILED[@]}" >&2
  exit 1
fi
