#!/usr/bin/env bash
# The local, Docker-free Atelier stack: Postgres, Redis, moto's S3 server and Airflow 3 (LocalExecutor).
# Usage: scripts/stack.sh up|down|status|env|exec CMD... (exec: run CMD with the stack's environment). Idempotent; all state lives in .state/ (git-ignored);
# `down` stops only the processes whose pid files `up` wrote.
set -euo pipefail
ATELIER_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export ATELIER_ROOT
set -a
# shellcheck disable=SC1091
source "$ATELIER_ROOT/config/local.env"
set +a
VENV="$ATELIER_ROOT/.venv"
STATE="$ATELIER_STATE"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
PGDATA="$STATE/pg/data"
PGBIN=""

log() { printf '[stack] %s\n' "$*" >&2; }

as_pg() {
  # Postgres refuses to run as root: use the Debian `postgres` user when we are root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_packages() {
  local missing=()
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from the machine's packages"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts a cluster/server of its own on the default ports; ours use other ports, leave them be.
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  fi
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$name did not become ready in ${secs}s; see $LOGS"; return 1
}

start_postgres() {
  mkdir -p "$STATE/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres "$STATE/pg"; fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initialising Postgres cluster in $PGDATA"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $ATELIER_PG_PORT
unix_socket_directories = '$STATE/pg'
max_connections = 200
fsync = on
CONF
  fi
  if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$STATE/pg/postgres.log" -w -t 60 start >/dev/null
  fi
  echo managed > "$PIDS/postgres.pid.note"
  local psql=("$PGBIN/psql" -h 127.0.0.1 -p "$ATELIER_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
  wait_for postgres 30 "${psql[@]}" -c "select 1"
  "${psql[@]}" -c "do \$\$ begin if not exists (select from pg_roles where rolname='atelier') then create role atelier login password 'atelier'; end if; end \$\$;"
  # CREATEDB: the test suite makes a throwaway ledger database per session.
  "${psql[@]}" -c "alter role atelier createdb"
  for db in airflow atelier; do
    if [ -z "$("${psql[@]}" -c "select 1 from pg_database where datname='$db'")" ]; then
      "${psql[@]}" -c "create database $db owner atelier"
    fi
  done
}

start_redis() {
  alive redis && return 0
  mkdir -p "$STATE/redis"
  redis-server --port "$ATELIER_REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" --daemonize yes \
    --pidfile "$PIDS/redis.pid" --logfile "$LOGS/redis.log" --appendonly yes --save "" >/dev/null
  wait_for redis 20 redis-cli -p "$ATELIER_REDIS_PORT" ping
}

spawn() { # name, command... : start in the background with a pid file, unless already running
  local name=$1; shift
  alive "$name" && return 0
  nohup "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! > "$PIDS/$name.pid"
}

start_s3() {
  spawn s3 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$ATELIER_S3_PORT"
  wait_for "moto S3" 30 curl -sf "$ATELIER_S3_ENDPOINT/moto-api/"
  "$VENV/bin/atelier" storage init
}

start_refservice() {
  # The reference inference service (a second, remote provider). Its quota is what
  # config/providers.json tells clients, with headroom: rps 50 vs 40, 8 jobs in flight vs 6.
  spawn refservice "$VENV/bin/atelier" refservice serve --port "$ATELIER_REFSERVICE_PORT" --rps 50 --max-in-flight 8
  wait_for refservice 30 curl -sf "http://127.0.0.1:$ATELIER_REFSERVICE_PORT/healthz"
}

start_airflow() {
  mkdir -p "$AIRFLOW_HOME"
  # Login for the UI and the REST API (simple auth manager): admin / admin, local only.
  [ -f "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ] || echo '{"admin": "admin"}' > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  if [ ! -f "$STATE/secrets.env" ]; then
    umask 077
    {
      echo "AIRFLOW__API_AUTH__JWT_SECRET=$(openssl rand -hex 32)"
      echo "AIRFLOW__API__SECRET_KEY=$(openssl rand -hex 32)"
      echo "AIRFLOW__CORE__FERNET_KEY=$("$VENV/bin/python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    } > "$STATE/secrets.env"
    umask 022
  fi
  set -a; source "$STATE/secrets.env"; set +a
  log "migrating Airflow's metadata database"
  "$VENV/bin/airflow" db migrate >>"$LOGS/airflow-init.log" 2>&1
  "$VENV/bin/airflow" pools import "$ATELIER_ROOT/config/pools.json" >>"$LOGS/airflow-init.log" 2>&1
  spawn api-server "$VENV/bin/airflow" api-server
  spawn scheduler "$VENV/bin/airflow" scheduler
  spawn dag-processor "$VENV/bin/airflow" dag-processor
  spawn triggerer "$VENV/bin/airflow" triggerer
  wait_for "Airflow api-server" 120 curl -sf "$ATELIER_AIRFLOW_URL/api/v2/monitor/health"
}

up() {
  [ -x "$VENV/bin/atelier" ] || { log "no virtualenv: run 'make venv' first"; exit 1; }
  ensure_packages
  mkdir -p "$PIDS" "$LOGS"
  start_postgres
  start_redis
  "$VENV/bin/atelier" db migrate
  start_s3
  start_refservice
  start_airflow
  log "up: Airflow UI $ATELIER_AIRFLOW_URL (admin / admin), S3 $ATELIER_S3_ENDPOINT, refservice :$ATELIER_REFSERVICE_PORT, Postgres 127.0.0.1:$ATELIER_PG_PORT, Redis 127.0.0.1:$ATELIER_REDIS_PORT"
}

stop_pid() {
  local name=$1 f="$PIDS/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # Airflow components fork children (task supervisors, gunicorn/uvicorn workers): stop the group.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  for name in scheduler triggerer dag-processor api-server refservice s3; do stop_pid "$name"; done
  if [ -f "$PIDS/redis.pid" ]; then
    redis-cli -p "$ATELIER_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || stop_pid redis
    rm -f "$PIDS/redis.pid"
  fi
  if [ -f "$PIDS/postgres.pid.note" ]; then
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    [ -n "$PGBIN" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    rm -f "$PIDS/postgres.pid.note"
  fi
  log "down"
}

status() {
  for name in api-server scheduler dag-processor triggerer refservice s3 redis; do
    if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if [ -f "$PGDATA/postmaster.pid" ]; then echo "postgres: running"; else echo "postgres: stopped"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  exec) shift; [ -f "$STATE/secrets.env" ] && { set -a; source "$STATE/secrets.env"; set +a; }; exec "$@" ;;
  env) env | grep -E '^(ATELIER_|AIRFLOW|AWS_|PYTHONPATH)' | sort ;;
  *) echo "usage: $0 up|down|status|env|exec CMD..." >&2; exit 2 ;;
esac
