#!/usr/bin/env bash
# A local flowhub cluster: N hub processes on 127.0.0.1 sharing the machine's Redis and
# PostgreSQL.
#
#   scripts/cluster.sh up 3        # nodes on ports 7878, 7879, 7880
#   scripts/cluster.sh status
#   scripts/cluster.sh down
#
# Environment: FLOWHUB_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/flowhub,
# created if missing), FLOWHUB_REDIS_URL (default redis://127.0.0.1:6379),
# FLOWHUB_JWT_SECRET (default: generated once into target/cluster/jwt-secret),
# BASE_PORT (default 7878), PROFILE (release or debug; default release).
set -euo pipefail
cd "$(dirname "$0")/.."
state=target/cluster
mkdir -p "$state"
db=${FLOWHUB_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flowhub}
redis=${FLOWHUB_REDIS_URL:-redis://127.0.0.1:6379}
base=${BASE_PORT:-7878}
profile=${PROFILE:-release}
if [ "$profile" = release ]; then build_flag=--release; else build_flag=; fi
if [ -z "${FLOWHUB_JWT_SECRET:-}" ]; then
  [ -f "$state/jwt-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/jwt-secret"
  FLOWHUB_JWT_SECRET=$(cat "$state/jwt-secret")
fi
export FLOWHUB_JWT_SECRET

case "${1:-}" in
  up)
    n=${2:-3}
    cargo build $build_flag -p flowhub
    dbname=${db##*/}
    psql "${db%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname='$dbname'" | grep -q 1 \
      || psql "${db%/*}/postgres" -c "CREATE DATABASE $dbname" >/dev/null
    for i in $(seq 0 $((n - 1))); do
      port=$((base + i))
      FLOWHUB_LISTEN=127.0.0.1:$port FLOWHUB_DATABASE_URL=$db FLOWHUB_REDIS_URL=$redis \
        FLOWHUB_NODE_ID=node-$port FLOWHUB_DATA_DIR=$state/node-$port \
        nohup "target/$profile/flowhub" serve > "$state/node-$port.log" 2>&1 &
      echo $! > "$state/node-$port.pid"
      echo "node-$port: ws://127.0.0.1:$port (log $state/node-$port.log)"
    done
    echo "token: FLOWHUB_JWT_SECRET=\$(cat $state/jwt-secret) target/$profile/flowhub token --sub you --flow '*' --role editor"
    ;;
  status)
    curl -s "http://127.0.0.1:$base/v1/nodes" || echo "no node on $base"
    echo
    ;;
  down)
    for pid in "$state"/*.pid; do
      [ -e "$pid" ] || continue
      kill -TERM "$(cat "$pid")" 2>/dev/null || true
      rm -f "$pid"
    done
    ;;
  *)
    echo "usage: $0 up [N] | status | down" >&2
    exit 2
    ;;
esac
