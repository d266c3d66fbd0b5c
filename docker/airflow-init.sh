#!/usr/bin/env bash
# One-shot setup (compose service airflow-init, ECS task definition init): the steps
# `scripts/stack.sh up` takes for the local stack, in the same order: the ledger database and its
# migrations, Airflow's metadata database, pools. The image's entrypoint has already waited for
# Postgres. Idempotent: safe to repeat before every deploy.
set -euo pipefail

echo "atelier: ledger database and migrations"
# The ledger's database beside Airflow's, created when missing (RDS and the postgres image create
# only one database), by the same user, connected to the server's maintenance database.
python - <<'PY'
import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ledger = conninfo_to_dict(os.environ["ATELIER_LEDGER_DSN"])
name = ledger["dbname"]
with psycopg.connect(make_conninfo(**{**ledger, "dbname": "postgres"}), autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"created database {name}")
PY
atelier db migrate

echo "airflow: metadata database migrations"
airflow db migrate

# pools.json is package data (or ATELIER_CONFIG_DIR's, when that directory has one).
pools=$(python -c 'from atelier.settings import config_path; print(config_path("pools.json"))')
echo "airflow: pools from ${pools}"
airflow pools import "${pools}"

# The connections the DAGs use come from AIRFLOW_CONN_* in the environment; fail here, before any
# component starts, if one is missing (output discarded: it holds passwords).
for conn in atelier_ledger atelier_s3; do
  airflow connections get "$conn" -o json >/dev/null || { echo "connection $conn is not set" >&2; exit 1; }
done
echo "airflow-init: done"
