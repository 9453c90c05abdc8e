#!/usr/bin/env bash
# A local multi-node deployment on loopback, for fault drills: a 3-node NATS JetStream cluster
# (the match log replicated 3 times), its own Redis (a primary, one replica and three Sentinels;
# roles reach it with a redis+sentinel:// URL), its own PostgreSQL server, 2 game servers,
# 3 gateways, 2 aggregators (competing consumers) and 1 snapshot API, each role its own process
# on its own 127.0.0.x address. `loadtest chaos` drives it (and injects the faults).
#
#   scripts/cluster.sh up       # build (release) and start everything; prints the addresses
#   scripts/cluster.sh status   # which processes are alive, /healthz of each role
#   scripts/cluster.sh down     # stop everything and remove the cluster's data
#   scripts/cluster.sh start-role NAME | start-nats N | start-postgres
#                               # (re)start one piece after a fault
#   scripts/cluster.sh redis-failover   # kill -9 the Redis primary, wait for the Sentinels to
#                               # promote the replica, bring the old primary back as its replica
#   scripts/cluster.sh redis-empty      # kill -9 both Redis servers, start them again empty
#                               # (a Redis that lost its memory; then `rebuild`)
#   scripts/cluster.sh stop-postgres   # an immediate (crash-like) stop of its PostgreSQL
#   scripts/cluster.sh rebuild  # rebuild the leaderboards from history and the log (after a
#                               # Redis loss)
#
# State lives in $CLUSTER_DIR (default /tmp/grandstand-cluster): logs/, pids/, nats and
# PostgreSQL data. GRANDSTAND_BIN runs that binary instead of building the release one; every
# GRANDSTAND_* variable in the caller's environment reaches the roles (e.g.
# GRANDSTAND_MATCH_SECS). The ports are fixed: one cluster per machine at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CLUSTER_DIR:-/tmp/grandstand-cluster}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/grandstand-target}"
bin="${GRANDSTAND_BIN:-$CARGO_TARGET_DIR/release/grandstand}"
nats=$(command -v nats-server || echo /usr/sbin/nats-server)

nats_urls="nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224"
# Redis data nodes (either may be the primary after a failover) and their Sentinels.
redis_ports=(16379 16380)
sentinel_ports=(26379 26380 26381)
redis_master=gsm
# Its own PostgreSQL server (not the machine's), so a drill can stop it without touching
# anything else on the machine.
pg_port=15432
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
database=grandstand
# initdb and postgres refuse to run as root.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# name  address     http  extra arguments
roles=(
  "game-1     127.0.0.21 19101 game-server --udp-addr 127.0.0.21:17777"
  "game-2     127.0.0.22 19101 game-server --udp-addr 127.0.0.22:17777"
  "gateway-1  127.0.0.23 18080 gateway --public-url http://127.0.0.23:18080"
  "gateway-2  127.0.0.24 18080 gateway --public-url http://127.0.0.24:18080"
  "gateway-3  127.0.0.25 18080 gateway --public-url http://127.0.0.25:18080"
  "aggregator-1 127.0.0.26 19102 aggregator"
  "aggregator-2 127.0.0.27 19102 aggregator"
  "api        127.0.0.28 18081 snapshot-api --matchmaker-url http://127.0.0.21:19101"
)

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.2; done
  echo "nothing listens on $1:$2" >&2
  return 1
}

start() { # name, then the command
  local name=$1
  shift
  # Appended: a role started again after a fault keeps its earlier log.
  "$@" >>"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

# Through `env` (which execs the program), so the recorded pid is the role's own.
role_env=(
  env NATS_URL="$nats_urls" NATS_REPLICAS=3
  REDIS_URL="redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/$redis_master" REDIS_PREFIX="gs:"
  DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$database"
  GRANDSTAND_TOKEN_SECRET="cluster-secret-cluster-secret-cluster"
  RUST_LOG="info,sqlx=warn,async_nats=warn"
)

# Starts one role by name (also used to restart a killed one).
start_role() {
  local want=$1 line name addr http role rest
  for line in "${roles[@]}"; do
    read -r name addr http role rest <<<"$line"
    [ "$name" = "$want" ] || continue
    # shellcheck disable=SC2086
    start "$name" "${role_env[@]}" "$bin" "$role" --http-addr "$addr:$http" $rest
    wait_port "$addr" "$http"
    return 0
  done
  echo "no role $want" >&2
  return 1
}

start_nats() { # node 1..3
  local n=$1 routes
  routes="nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224"
  mkdir -p "$dir/nats-$n"
  start "nats-$n" "$nats" -a 127.0.0.1 -p $((14221 + n)) -n "gs-$n" -js -sd "$dir/nats-$n" \
    --cluster_name grandstand --cluster "nats://127.0.0.1:$((16221 + n))" --routes "$routes"
  wait_port 127.0.0.1 $((14221 + n))
}

redis_data() { # port, then extra arguments: an empty Redis data node
  local port=$1
  shift
  # Its own directory, emptied first: a replica writes the copy it syncs to dump.rdb in its
  # directory, which a later start would load (old checkpoints and boards).
  rm -rf "$dir/redis-$port"
  mkdir -p "$dir/redis-$port"
  start "redis-$port" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/redis-$port" \
    --save "" --appendonly no --repl-diskless-sync-delay 0 "$@"
  wait_port 127.0.0.1 "$port"
}

start_sentinels() {
  local n port conf
  for n in 0 1 2; do
    port=${sentinel_ports[$n]}
    conf="$dir/sentinel-$n.conf"
    printf '%s\n' "port $port" "bind 127.0.0.1" "dir $dir" \
      "sentinel monitor $redis_master 127.0.0.1 ${redis_ports[0]} 2" \
      "sentinel down-after-milliseconds $redis_master 1000" \
      "sentinel failover-timeout $redis_master 5000" \
      "sentinel parallel-syncs $redis_master 1" >"$conf"
    start "sentinel-$n" redis-server "$conf" --sentinel
    wait_port 127.0.0.1 "$port"
  done
}

# The port of the current primary, as the Sentinels name it.
redis_primary() {
  redis-cli -p "${sentinel_ports[0]}" sentinel get-master-addr-by-name "$redis_master" | sed -n 2p
}

# Whether every Sentinel names port $1 as the primary and it says it is one.
promoted() {
  local port
  for port in "${sentinel_ports[@]}"; do
    [ "$(redis-cli -p "$port" sentinel get-master-addr-by-name "$redis_master" | sed -n 2p)" = "$1" ] || return 1
  done
  redis-cli -p "$1" info replication | grep -q '^role:master'
}

start_redis() { # a primary and its replica, then the Sentinels watching them
  redis_data "${redis_ports[0]}"
  redis_data "${redis_ports[1]}" --replicaof 127.0.0.1 "${redis_ports[0]}"
  start_sentinels
}

redis_failover() {
  local old new
  old=$(redis_primary)
  if [ "$old" = "${redis_ports[0]}" ]; then new=${redis_ports[1]}; else new=${redis_ports[0]}; fi
  kill -9 "$(cat "$dir/pids/redis-$old.pid")"
  for _ in $(seq 1 150); do promoted "$new" && break; sleep 0.1; done
  promoted "$new" || { echo "the Sentinels did not promote $new within 15 s" >&2; return 1; }
  echo "redis primary $old -> $new"
  redis_data "$old" --replicaof 127.0.0.1 "$new"
}

redis_empty() { # both data nodes lost: back empty, in the roles the Sentinels know
  local primary port
  primary=$(redis_primary)
  for port in "${redis_ports[@]}"; do kill -9 "$(cat "$dir/pids/redis-$port.pid")" 2>/dev/null || true; done
  sleep "${1:-0}"
  redis_data "$primary"
  for port in "${redis_ports[@]}"; do
    [ "$port" = "$primary" ] || redis_data "$port" --replicaof 127.0.0.1 "$primary"
  done
}

start_postgres() {
  if [ ! -d "$dir/pg" ]; then
    mkdir -p "$dir/pg"
    chown postgres "$dir/pg" 2>/dev/null || true
    as_postgres "$pg_bin/initdb" -D "$dir/pg/data" -A trust -U postgres -E UTF8 >/dev/null
  fi
  as_postgres "$pg_bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w -o \
    "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null
  psql -h 127.0.0.1 -p "$pg_port" -U postgres -qtAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE $database"
}

stop_postgres() {
  as_postgres "$pg_bin/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >/dev/null
}

rebuild() {
  # shellcheck disable=SC2086
  "${role_env[@]}" "$bin" aggregator --rebuild
}

up() {
  if [ -d "$dir/pids" ] && ls "$dir"/pids/*.pid >/dev/null 2>&1; then
    echo "a cluster is already up in $dir (scripts/cluster.sh down first)" >&2
    exit 1
  fi
  local port
  for port in 14222 16379 16380 26379 "$pg_port"; do
    if port_open 127.0.0.1 "$port"; then
      echo "127.0.0.1:$port is taken: another cluster is up (CLUSTER_DIR=... $0 down)" >&2
      exit 1
    fi
  done
  [ -n "${GRANDSTAND_BIN:-}" ] || cargo build --release -q -p grandstand
  mkdir -p "$dir/logs" "$dir/pids"
  for n in 1 2 3; do start_nats "$n"; done
  start_redis
  start_postgres
  # The first role creates the replicated stream once the JetStream cluster has a leader.
  local line name
  for line in "${roles[@]}"; do
    read -r name _ <<<"$line"
    start_role "$name"
  done
  echo "cluster up in $dir"
  for line in "${roles[@]}"; do
    read -r name addr http _ <<<"$line"
    printf '  %-13s http://%s:%s\n' "$name" "$addr" "$http"
  done
  echo "  nats          $nats_urls (stream MATCHES, 3 replicas)"
  echo "  redis         redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/$redis_master (primary :$(redis_primary))"
  echo "  postgres      postgres://postgres@127.0.0.1:$pg_port/$database"
}

status() {
  local f name pid line addr http
  for f in "$dir"/pids/*.pid; do
    [ -e "$f" ] || { echo "no cluster in $dir"; return 0; }
    name=$(basename "$f" .pid)
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "up    $name (pid $pid)"; else echo "DOWN  $name"; fi
  done
  for line in "${roles[@]}"; do
    read -r name addr http _ <<<"$line"
    printf '%-13s /healthz: %s\n' "$name" "$(curl -s -m 2 "http://$addr:$http/healthz" || echo unreachable)"
  done
}

down() {
  local f
  for f in "$dir"/pids/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  for f in "$dir"/pids/*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  [ -d "$dir/pg/data" ] && { stop_postgres 2>/dev/null || true; }
  rm -rf "$dir"
  echo "cluster down"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  start-role) start_role "$2" ;;
  start-nats) start_nats "$2" ;;
  redis-failover) redis_failover ;;
  redis-empty) redis_empty "${2:-0}" ;;
  start-postgres) start_postgres ;;
  stop-postgres) stop_postgres ;;
  rebuild) rebuild ;;
  *) echo "usage: $0 up|status|down|start-role NAME|start-nats N|redis-failover|redis-empty [SECS]|start-postgres|stop-postgres|rebuild" >&2; exit 2 ;;
esac
