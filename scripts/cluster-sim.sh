#!/usr/bin/env bash
# A simulated flowhub cluster on one machine, measured: N hub processes (release
# build) against a private Redis (single server, or a 3-shard Redis Cluster the script
# creates) and a fresh PostgreSQL database, loaded by `flowhub-loadtest cluster`
# (idle subscribed sessions on thousands of flows, then editors). The reports go to
# loadtest/results/cluster-sim-<variant>.json and .html; docs/SCALING.md reads them.
#
#   scripts/cluster-sim.sh                       # both variants with the defaults below
#   VARIANTS=single NODES=10 FLOWS=6000 scripts/cluster-sim.sh
#
# Environment (defaults):
#   VARIANTS=single cluster    which Redis setups to run, in order
#   NODES=8                    hub processes
#   FLOWS=5000                 open flows
#   SESSIONS_PER_FLOW=2        idle subscribed sessions per flow (each on another node)
#   EDITORS=100 EDIT_RATE=2    editing sessions (distinct flows) × edits/s each
#   IDLE=20s EDIT=20s          the two measured windows
#   RAMP=20s                   sessions connect over this long
#   DB_POOL=4                  FLOWHUB_DATABASE_POOL per node (nodes × pool must fit
#                              the server's max_connections, 100 by default)
#   PG_ADMIN=postgres://postgres@127.0.0.1:5432/postgres   (trust auth; a fresh
#                              database flowhub_sim_<variant>_<time> is created and
#                              dropped afterwards unless KEEP_DB=1)
#   OUT=loadtest/results       where the reports go
#
# Needs redis-server and redis-cli (any Redis ≥ 7 for sharded pub/sub), psql, and
# PostgreSQL reachable at PG_ADMIN. Redis is always a private server on free ports,
# never the shared one on 6379: the measurements must see only this cluster.
# Each hub runs with `ulimit -n` at the hard limit (20,000 here). Exits non-zero if a
# run's checks fail (the reports are written anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS=${VARIANTS:-single cluster}
NODES=${NODES:-8}
FLOWS=${FLOWS:-5000}
SESSIONS_PER_FLOW=${SESSIONS_PER_FLOW:-2}
EDITORS=${EDITORS:-100}
EDIT_RATE=${EDIT_RATE:-2}
IDLE=${IDLE:-20s}
EDIT=${EDIT:-20s}
RAMP=${RAMP:-20s}
DB_POOL=${DB_POOL:-4}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
KEEP_DB=${KEEP_DB:-0}
OUT=${OUT:-loadtest/results}
state=$PWD/target/cluster-sim
mkdir -p "$state" "$OUT"

command -v redis-server >/dev/null || { echo "redis-server is needed" >&2; exit 1; }
command -v psql >/dev/null || { echo "psql is needed" >&2; exit 1; }
psql "$PG_ADMIN" -tAc 'SELECT 1' >/dev/null || { echo "PostgreSQL is not reachable at $PG_ADMIN" >&2; exit 1; }

echo "== build (release)"
CARGO_INCREMENTAL=0 cargo build --release -p flowhub -p flowhub-loadtest
hub=target/release/flowhub
harness=target/release/flowhub-loadtest

FLOWHUB_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLOWHUB_JWT_SECRET

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A cluster node also listens on its port + 10000 (the cluster bus), so its port must
# be at most 55535 and both must be free.
free_cluster_port() {
  python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 55535)
    if free(p) and free(p + 10000):
        print(p)
        break
PY
}

hub_pids=()
redis_ports=()
db=""
cleanup() {
  for pid in "${hub_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${hub_pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  hub_pids=()
  for port in "${redis_ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  redis_ports=()
  if [ -n "$db" ] && [ "$KEEP_DB" != 1 ]; then
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  db=""
}
trap cleanup EXIT

start_redis() { # port [extra redis-server args...]
  local port=$1
  shift
  local dir=$state/redis-$port
  rm -rf "$dir"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize yes "$@"
  redis_ports+=("$port")
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server on $port did not start (see $dir/redis.log)" >&2
  return 1
}

overall=0
for variant in $VARIANTS; do
  echo "== variant $variant: $NODES nodes, $FLOWS flows × $SESSIONS_PER_FLOW idle sessions, $EDITORS editors × $EDIT_RATE edits/s"
  case $variant in
    single)
      port=$(free_port)
      start_redis "$port"
      redis_url=redis://127.0.0.1:$port
      redis_list=127.0.0.1:$port
      ;;
    cluster)
      ports=()
      for _ in 1 2 3; do
        port=$(free_cluster_port)
        start_redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
          --cluster-node-timeout 5000
        ports+=("$port")
      done
      redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 \
        --cluster-yes >"$state/cluster-create.log"
      for _ in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info | grep -q 'cluster_state:ok' && break
        sleep 0.1
      done
      redis_url=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
      redis_url=${redis_url%,}
      redis_list=$(printf '127.0.0.1:%s,' "${ports[@]}")
      redis_list=${redis_list%,}
      ;;
    *)
      echo "unknown variant $variant (single or cluster)" >&2
      exit 2
      ;;
  esac

  db=flowhub_sim_${variant}_$(date +%s)
  psql "$PG_ADMIN" -qc "CREATE DATABASE $db" >/dev/null
  db_url=${PG_ADMIN%/*}/$db
  "$hub" migrate --database-url "$db_url" >/dev/null

  targets=()
  for i in $(seq 0 $((NODES - 1))); do
    port=$(free_port)
    dir=$state/node-$i
    rm -rf "$dir"
    mkdir -p "$dir"
    (
      ulimit -n "$(ulimit -Hn)"
      FLOWHUB_LISTEN=127.0.0.1:$port FLOWHUB_DATABASE_URL=$db_url FLOWHUB_REDIS_URL=$redis_url \
        FLOWHUB_NODE_ID=sim-$i FLOWHUB_DATA_DIR=$dir FLOWHUB_DATABASE_POOL=$DB_POOL RUST_LOG=warn \
        exec "$hub" serve >"$dir/log" 2>&1
    ) &
    hub_pids+=("$!")
    targets+=("ws://127.0.0.1:$port")
  done
  for t in "${targets[@]}"; do
    url=http://${t#ws://}/readyz
    for _ in $(seq 1 150); do
      curl -sf "$url" >/dev/null && break
      sleep 0.2
    done
    curl -sf "$url" >/dev/null || { echo "node $t is not ready (see $state/node-*/log)" >&2; exit 1; }
  done
  target_list=$(IFS=,; echo "${targets[*]}")

  echo "   nodes ready: $target_list; redis: $redis_list; database: $db"
  set +e
  "$harness" cluster --targets "$target_list" --redis "$redis_list" --database-url "$db_url" \
    --flows "$FLOWS" --sessions-per-flow "$SESSIONS_PER_FLOW" \
    --editors "$EDITORS" --edit-rate "$EDIT_RATE" \
    --idle-duration "$IDLE" --duration "$EDIT" --ramp-up "$RAMP" --no-progress \
    --name "cluster-sim-$variant ($NODES nodes)" \
    --out "$OUT/cluster-sim-$variant.json" --html "$OUT/cluster-sim-$variant.html"
  rc=$?
  set -e
  [ "$rc" -eq 0 ] || overall=$rc
  cleanup
done
exit "$overall"
