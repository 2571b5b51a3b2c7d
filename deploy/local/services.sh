#!/usr/bin/env bash
# Starts the infrastructure the platform and its tests talk to, where nothing listens yet:
# NATS with JetStream (4222), Redis (6379) and, with --postgres, PostgreSQL (5432).
set -euo pipefail
cd "$(dirname "$0")/../.."
state="${ENCLAVE_HOME:-$PWD/.enclave}/infra"
mkdir -p "$state"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do listening "$1" && return 0; sleep 0.2; done
  echo "nothing listens on $1 after starting $2" >&2
  return 1
}

if ! listening 4222; then
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  echo "starting nats-server with JetStream on 127.0.0.1:4222"
  setsid nohup "$nats" -a 127.0.0.1 -p 4222 -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
  wait_port 4222 nats-server
fi

if ! listening 6379; then
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$state" --logfile "$state/redis.log"
  wait_port 6379 redis-server
fi

if [ "${1:-}" = "--postgres" ]; then
  version=$(ls /etc/postgresql | sort -n | tail -1)
  if ! listening 5432; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_port 5432 postgresql
  fi
  # Tests connect as postgres over TCP without a password, as on the CI machines; a fresh
  # Debian cluster asks for one, so allow it on the loopback address only.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    grep -q "enclave-test-trust" "$hba" || sed -i '1i host all all 127.0.0.1/32 trust # enclave-test-trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
fi
