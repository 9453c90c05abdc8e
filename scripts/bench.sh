#!/usr/bin/env bash
# The full benchmark suite behind docs/benchmarks.md: every scenario with its JSON in
# docs/results/, then `loadtest report` regenerates the document and its plots. Takes about
# 25 minutes on 2 cores; nothing else should run meanwhile. Smoke-sized runs of the same
# scenarios are part of the test command (loadtest/tests/smoke.rs).
#
#   scripts/bench.sh            # everything
#   scripts/bench.sh viewers    # one group: aggregator | http | players | viewers | wire | report
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/grandstand-target}"
scripts/services.sh
cargo build --release -q -p loadtest -p grandstand
bin="$CARGO_TARGET_DIR/release"
lt() { "$bin/loadtest" "$@"; }
out=docs/results
mkdir -p "$out"
want() { [ $# -eq 0 ] || [ -z "${only:-}" ] || [ "$only" = "$1" ]; }
only="${1:-}"

if want aggregator; then
  lt --json "$out/aggregator.json" aggregator --events 200000 --batch 5000 --server-pid "$(pidof redis-server | cut -d' ' -f1)"
fi

if want http; then
  # A release server on the real backends, its own stream, key prefix and database.
  tag="bench$$"
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS gs_test_$tag" -c "CREATE DATABASE gs_test_$tag"
  export NATS_URL=nats://127.0.0.1:4222 NATS_STREAM="GS_LOADTEST_$tag" NATS_SUBJECT_ROOT="gsload$tag"
  export REDIS_URL=redis://127.0.0.1:6379 REDIS_PREFIX="gs-loadtest-$tag:"
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/gs_test_$tag" GRANDSTAND_TOKEN_SECRET=bench-secret-bench-secret-bench-secret
  log=$(mktemp)
  "$bin/grandstand" --http-addr 127.0.0.1:18090 --udp-addr 127.0.0.1:0 --matches 2 --bots 8 >"$log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do curl -sf localhost:18090/healthz >/dev/null && break; sleep 0.2; done
  sleep 6
  lt --json "$out/http.json" http --base http://127.0.0.1:18090 --concurrency 32 --duration-secs 8 --server-pid $server
  lt --json "$out/leaderboard.json" leaderboard --base http://127.0.0.1:18090 --concurrency 32 --duration-secs 8 --server-pid $server
  lt --json "$out/freshness.json" freshness --base http://127.0.0.1:18090 --kills 100 --server-pid $server
  kill $server; wait $server 2>/dev/null || true
  trap - EXIT
  unset NATS_URL NATS_STREAM NATS_SUBJECT_ROOT REDIS_URL REDIS_PREFIX DATABASE_URL GRANDSTAND_TOKEN_SECRET
fi

if want players; then
  for room in 10 25 50 100; do
    lt --json "$out/players-room$room.json" players --players "$room" --room-size "$room" --duration 8 --compare
  done
  for hz in 30 60 128; do
    lt --json "$out/players-tick$hz.json" players --players 50 --room-size 50 --duration 8 --tick-hz "$hz"
  done
  for hz in 20 15; do
    lt --json "$out/players-snapshot$hz.json" players --players 50 --room-size 50 --duration 8 --snapshot-hz "$hz"
  done
  lt --json "$out/players-sends.json" players --players 50 --room-size 50 --duration 8 --compare-sends
fi

if want viewers; then
  all=grandstand,node-ws,socketio,nats-ws,raw
  lt --json "$out/viewers-1k.json" viewers --systems "$all" --viewers 1000 --matches 10 --rate 10 --duration 15
  lt --json "$out/viewers-10k.json" viewers --systems "$all" --viewers 10000 --matches 20 --rate 2 --duration 15
  # One process holds at most ~19,900 sockets here (hard open-file limit), so 50k runs on 3
  # processes of each system; nats-server's WebSocket listener is one process and sits out.
  lt --json "$out/viewers-50k.json" viewers --systems grandstand,node-ws,socketio,raw \
    --viewers 50000 --matches 48 --rate 1 --duration 15 --gateways 3
  lt --json "$out/storm-reconnect-10k.json" reconnect-storm --viewers 10000 --matches 20 --rate 2 --duration 10
  lt --json "$out/storm-cold-load-10k.json" cold-load-storm --viewers 10000 --matches 20 --rate 2 --duration 10
fi

if want wire; then
  # A recorded 50-player match (loadtest/feeds/match-50.jsonl.gz) replayed to the viewers:
  # bytes per viewer per format and transport, then the fan-out against its peers, then one
  # match to 1k and 10k viewers (compression is paid once per match, not per viewer).
  lt --json "$out/wire.json" wire
  lt --json "$out/match-5k.json" viewers --systems grandstand,uws,raw,node-ws,socketio --workload match \
    --storm none --viewers 5000 --matches 10 --rate 10 --duration 20
  lt --json "$out/match-1-1k.json" viewers --systems grandstand,uws --workload match --storm none \
    --viewers 1000 --matches 1 --rate 10 --duration 20
  lt --json "$out/match-1-10k.json" viewers --systems grandstand,uws --workload match --storm none \
    --viewers 10000 --matches 1 --rate 10 --duration 20
fi

if want report || [ -z "$only" ]; then
  lt report
fi
