#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and NATS (JetStream) answer on 127.0.0.1, starting any that does
# not, and create the test databases. Used by .ci/run; safe to run again at any time.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
TEST_DATABASES=${TEST_DATABASES:-llmreg_test}

answers() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_for() { # name host port
  for _ in $(seq 1 60); do
    answers "$2" "$3" && { echo "services: $1 answers on $2:$3"; return 0; }
    sleep 0.5
  done
  echo "services: $1 does not answer on $2:$3" >&2
  return 1
}

if ! answers "$PGHOST" "$PGPORT"; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
fi
wait_for PostgreSQL "$PGHOST" "$PGPORT"
for _ in $(seq 1 30); do pg_isready -h "$PGHOST" -p "$PGPORT" -q && break; sleep 0.5; done

if ! answers 127.0.0.1 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis 127.0.0.1 6379

if ! answers 127.0.0.1 4222; then
  echo "services: starting NATS with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
wait_for NATS 127.0.0.1 4222

for db in $TEST_DATABASES; do
  if ! psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -qc "CREATE DATABASE \"$db\""
    echo "services: created database $db"
  fi
done
