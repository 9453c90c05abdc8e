#!/usr/bin/env bash
# Makes sure PostgreSQL (5432), Redis (6379) and NATS with JetStream (4222) run on 127.0.0.1,
# installing and starting whichever is missing (and installs nginx for the proxy test). Idempotent; safe to run before every test run.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_install=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
{ command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; } || need_install+=(nats-server)
# nginx is not a service the platform needs: tests/proxy.rs drives the sample config with it.
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || need_install+=(nginx-light)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "installing: ${need_install[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}"
fi

if ! port_open 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! port_open 6379; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! port_open 4222; then
  echo "starting NATS (JetStream)"
  mkdir -p /var/lib/nats-server
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  start-stop-daemon --start --oknodo --background --exec "$nats" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi

for port in 5432 6379 4222; do
  for _ in $(seq 1 60); do port_open "$port" && break; sleep 0.5; done
  port_open "$port" || { echo "service on port $port did not come up" >&2; exit 1; }
done
# Tests connect as the postgres superuser over TCP (trust auth on this kind of machine).
psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null
echo "services: PostgreSQL, Redis and NATS JetStream are up"
# Streams left by interrupted test runs keep JetStream storage reserved: drop them first.
python3 "$(dirname "$0")/nats_cleanup.py"
# Likewise test databases and Redis keys that interrupted runs left behind.
psql -h 127.0.0.1 -U postgres -d postgres -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'gs\_test\_%'" |
  while read -r db; do
    [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE \"$db\" WITH (FORCE)"
  done
for pattern in 'gs-test-*' 'gs-adapter-*' 'gs-loadtest-*'; do
  redis-cli -h 127.0.0.1 --scan --pattern "$pattern" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null
done
