#!/usr/bin/env bash
# The local, Docker-free Atelier stack: Postgres, Redis, moto's S3 server, the reference service and
# Airflow 3 (LocalExecutor).
# Usage: scripts/stack.sh up|down|status|env|exec CMD...|run PROGRAM
#   up      idempotent: starts what is not running, in dependency order, and waits for each.
#   down    stops exactly what up started: supervisord and its programs, then Postgres.
#   status  each program's state, pid, uptime and restart count.
#   exec    runs CMD with the stack's environment.
#   run     (used by supervisord) execs one program in the foreground with the stack's environment.
# Postgres runs under pg_ctl (it has its own postmaster); everything else runs under supervisord
# (config/supervisord.conf), which restarts a program that exits. All state lives in .state/.
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
SUPERVISOR_CONF="$ATELIER_ROOT/config/supervisord.conf"
PROGRAMS=(redis s3 refservice api-server scheduler dag-processor triggerer)

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

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$name did not become ready in ${secs}s; see $LOGS"; return 1
}

load_secrets() { if [ -f "$STATE/secrets.env" ]; then set -a; source "$STATE/secrets.env"; set +a; fi; }

ensure_secrets() {
  # Generated once per checkout, before anything starts: every program reads them when it starts.
  if [ ! -f "$STATE/secrets.env" ]; then
    umask 077
    {
      echo "AIRFLOW__API_AUTH__JWT_SECRET=$(openssl rand -hex 32)"
      echo "AIRFLOW__API__SECRET_KEY=$(openssl rand -hex 32)"
      echo "AIRFLOW__CORE__FERNET_KEY=$("$VENV/bin/python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    } > "$STATE/secrets.env"
    umask 022
  fi
  # The reference service's /admin/* token (added to older secrets files too).
  grep -q '^ATELIER_REFSERVICE_ADMIN_TOKEN=' "$STATE/secrets.env" \
    || echo "ATELIER_REFSERVICE_ADMIN_TOKEN=$(openssl rand -hex 32)" >> "$STATE/secrets.env"
  load_secrets
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

sctl() { "$VENV/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"; }

supervisord_running() { sctl pid >/dev/null 2>&1; }

start_supervisord() {
  if supervisord_running; then
    # Apply edits of config/supervisord.conf (a changed program is stopped and re-added; it is
    # started again below). With the file unchanged this changes nothing.
    sctl update >/dev/null
  else
    "$VENV/bin/supervisord" -c "$SUPERVISOR_CONF" </dev/null >>"$LOGS/supervisord.out" 2>&1
    wait_for supervisord 20 supervisord_running
  fi
}

start_program() { # name (or group:*): start under supervisord unless running; waits startsecs
  local out
  if ! out=$(sctl start "$1" 2>&1); then
    log "supervisord could not start $1: $out (see $LOGS/)"; return 1
  fi
  case "$out" in *"already started"*|"") ;; *) log "$out" ;; esac
}

start_redis() {
  mkdir -p "$STATE/redis"
  start_program redis
  wait_for redis 20 redis-cli -p "$ATELIER_REDIS_PORT" ping
}

start_s3() {
  start_program s3
  wait_for "moto S3" 30 curl -sf "$ATELIER_S3_ENDPOINT/moto-api/"
  "$VENV/bin/atelier" storage init
}

start_refservice() {
  start_program refservice
  wait_for refservice 30 curl -sf "http://127.0.0.1:$ATELIER_REFSERVICE_PORT/healthz"
}

start_airflow() {
  mkdir -p "$AIRFLOW_HOME"
  # Login for the UI and the REST API (simple auth manager): admin / admin, local only.
  [ -f "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ] || echo '{"admin": "admin"}' > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  log "migrating Airflow's metadata database"
  "$VENV/bin/airflow" db migrate >>"$LOGS/airflow-init.log" 2>&1
  "$VENV/bin/airflow" pools import "$ATELIER_ROOT/config/pools.json" >>"$LOGS/airflow-init.log" 2>&1
  start_program 'airflow:*'
  wait_for "Airflow api-server" 120 curl -sf "$ATELIER_AIRFLOW_URL/api/v2/monitor/health"
}

run_program() { # name: exec one program in the foreground (supervisord's command for it)
  load_secrets
  case "$1" in
    # Foreground, logging to stdout: supervisord owns the process and its log.
    redis) exec redis-server --port "$ATELIER_REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" \
      --daemonize no --logfile "" --appendonly yes --save "" ;;
    s3) exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "$ATELIER_S3_PORT" ;;
    # The reference inference service (a second, remote provider). Its quota is what
    # config/providers.json tells clients, with headroom: rps 50 vs 40, 8 jobs in flight vs 6.
    refservice) exec "$VENV/bin/atelier" refservice serve --port "$ATELIER_REFSERVICE_PORT" --rps 50 --max-in-flight 8 ;;
    api-server|scheduler|dag-processor|triggerer) exec "$VENV/bin/airflow" "$1" ;;
    *) echo "unknown program: $1" >&2; exit 2 ;;
  esac
}

stop_pid() { # name: stop a process a pre-supervisord `up` started with a pid file
  local name=$1 f="$PIDS/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid), started without supervisord"
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_unsupervised() {
  # Earlier versions of this script started each program itself with a pid file: stop those once
  # so that supervisord can take over their ports.
  local name
  for name in "${PROGRAMS[@]}"; do stop_pid "$name"; done
}

up() {
  [ -x "$VENV/bin/atelier" ] || { log "no virtualenv: run 'make venv' first"; exit 1; }
  [ -x "$VENV/bin/supervisord" ] || { log "no supervisord in $VENV: run 'make venv'"; exit 1; }
  ensure_packages
  mkdir -p "$PIDS" "$LOGS"
  ensure_secrets
  stop_unsupervised
  start_postgres
  start_supervisord
  start_redis
  "$VENV/bin/atelier" db migrate
  start_s3
  start_refservice
  start_airflow
  log "up: Airflow UI $ATELIER_AIRFLOW_URL (admin / admin), S3 $ATELIER_S3_ENDPOINT, refservice :$ATELIER_REFSERVICE_PORT, Postgres 127.0.0.1:$ATELIER_PG_PORT, Redis 127.0.0.1:$ATELIER_REDIS_PORT; make status"
}

down() {
  if supervisord_running; then
    local spid; spid=$(sctl pid)
    # Stops every program (its whole process group), then supervisord exits.
    sctl shutdown >/dev/null
    for _ in $(seq 1 240); do kill -0 "$spid" 2>/dev/null || break; sleep 0.5; done
  fi
  stop_unsupervised
  if [ -f "$PIDS/postgres.pid.note" ]; then
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    [ -n "$PGBIN" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    rm -f "$PIDS/postgres.pid.note"
  fi
  log "down"
}

restart_counts() {
  # supervisord does not count restarts: a restart is a "spawned" of a program whose previous
  # process "exited" by itself (a requested stop logs "stopped" instead), counted since the
  # running supervisord started. Prints "name count" lines.
  awk '
    /supervisord started with pid/ { split("", exited); split("", n); next }
    $4 == "exited:" { exited[$5] = 1 }
    $4 == "stopped:" { exited[$5] = 0 }
    $4 == "spawned:" { p = $5; gsub("\047", "", p); if (exited[p]) { n[p]++; exited[p] = 0 } }
    END { for (p in n) print p, n[p] }
  ' "$LOGS/supervisord.log" 2>/dev/null || true
}

status() {
  if supervisord_running; then
    local counts name state detail restarts
    counts=$(restart_counts)
    # supervisorctl status: "group:name  STATE  pid 123, uptime 0:01:02" (exits 3 when one is down).
    while read -r name state detail; do
      name=${name#*:}
      restarts=$(awk -v p="$name" '$1 == p { print $2 }' <<<"$counts")
      echo "$name: ${state,,} (${detail:+$detail, }restarts ${restarts:-0})"
    done < <(sctl status || true)
    echo "supervisord: running (pid $(sctl pid), socket $STATE/supervisor.sock)"
  else
    for name in "${PROGRAMS[@]}"; do echo "$name: stopped"; done
    echo "supervisord: stopped"
  fi
  if [ -f "$PGDATA/postmaster.pid" ]; then echo "postgres: running (pg_ctl)"; else echo "postgres: stopped"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  run) shift; run_program "${1:-}" ;;
  exec) shift; load_secrets; exec "$@" ;;
  env) env | grep -E '^(ATELIER_|AIRFLOW|AWS_|PYTHONPATH)' | sort ;;
  *) echo "usage: $0 up|down|status|env|exec CMD...|run PROGRAM" >&2; exit 2 ;;
esac
