#!/usr/bin/env bash
# Starts the infrastructure the platform and its tests talk to, where nothing listens yet:
# NATS with JetStream (4222) and Redis (6379). With --postgres, a private PostgreSQL
# cluster for the tests, on a free port, with a generated password (its URL is written to
# <state>/postgres.url, where tests/infra.py finds it). --stop stops what this script
# started and removes the test cluster. Nothing here edits system configuration.
set -euo pipefail
cd "$(dirname "$0")/../.."
home="${ENCLAVE_HOME:-$PWD/.enclave}"
state="$home/infra"
# ENCLAVE_HOME holds the JetStream store (raw prompts) and keys: only its owner may enter.
(umask 077 && mkdir -p "$state")
chmod 700 "$home"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do listening "$1" && return 0; sleep 0.2; done
  echo "nothing listens on $1 after starting $2" >&2
  return 1
}

# PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` system
# user (the Debian package creates it), in a directory of its own outside ENCLAVE_HOME
# (which is 0700); otherwise as the current user, under ENCLAVE_HOME.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ "$(id -u)" = 0 ]; then
  pg_run() { runuser -u postgres -- "$@"; }
  pg_dir="${ENCLAVE_TEST_PG_DIR:-/var/tmp/enclave-pg-$(printf %s "$PWD" | md5sum | cut -c1-10)}"
else
  pg_run() { "$@"; }
  pg_dir="${ENCLAVE_TEST_PG_DIR:-$state/pg}"
fi

stop() {
  if [ -f "$state/started" ]; then
    while read -r kind pid; do
      if [ "$kind" != postgres ] && kill -0 "$pid" 2>/dev/null; then
        echo "stopping $kind (pid $pid)"
        kill "$pid"
      fi
    done <"$state/started"
    rm -f "$state/started"
  fi
  if [ -f "$pg_dir/data/postmaster.pid" ]; then
    echo "stopping the test PostgreSQL cluster in $pg_dir"
    pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null || true
  fi
  rm -rf "$pg_dir" "$state/postgres.url"
}

if [ "${1:-}" = "--stop" ]; then
  stop
  exit 0
fi

if ! listening 4222; then
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  echo "starting nats-server with JetStream on 127.0.0.1:4222"
  setsid nohup "$nats" -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
  echo "nats $!" >>"$state/started"
  wait_port 4222 nats-server
fi

if ! listening 6379; then
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$state" --logfile "$state/redis.log" --pidfile "$state/redis.pid"
  wait_port 6379 redis-server
  echo "redis $(cat "$state/redis.pid")" >>"$state/started"
fi

if [ "${1:-}" = "--postgres" ]; then
  if [ -z "$pg_bin" ]; then
    echo "PostgreSQL is not installed: sudo apt-get install postgresql" >&2
    exit 1
  fi
  if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
    echo "creating a private PostgreSQL cluster for the tests in $pg_dir"
    pg_run mkdir -p -m 0700 "$pg_dir"
    # A password, not trust: any local user could otherwise connect as the superuser.
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n' | pg_run sh -c "umask 077; cat >'$pg_dir/password'"
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' |
      pg_run sh -c "cat >'$pg_dir/port'"
    pg_run "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A scram-sha-256 \
      --pwfile="$pg_dir/password" -E UTF8 >"$state/initdb.log" 2>&1 ||
      { cat "$state/initdb.log" >&2; exit 1; }
  fi
  port=$(cat "$pg_dir/port")
  if ! pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
    echo "starting the test PostgreSQL cluster on 127.0.0.1:$port"
    # Throwaway test data: no fsync (a clean stop still loses nothing).
    pg_run "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -s \
      -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start
    echo "postgres $(head -1 "$pg_dir/data/postmaster.pid")" >>"$state/started"
  fi
  (umask 077 && echo "postgresql://postgres:$(cat "$pg_dir/password")@127.0.0.1:$port/postgres" >"$state/postgres.url")
fi
