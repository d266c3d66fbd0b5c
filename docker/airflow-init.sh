#!/usr/bin/env bash
# One-shot setup of the compose stack (service airflow-init), the steps `scripts/stack.sh up` takes
# for the local stack, in the same order: ledger migrations, Airflow's metadata database, pools,
# the UI/API login. The image's entrypoint has already waited for Postgres. Idempotent: every
# step is safe to repeat on each `docker compose up`.
set -euo pipefail

echo "atelier: ledger migrations"
atelier db migrate

echo "airflow: metadata database migrations"
airflow db migrate

echo "airflow: pools from ${ATELIER_ROOT}/config/pools.json"
airflow pools import "${ATELIER_ROOT}/config/pools.json"

# The connections the DAGs use come from AIRFLOW_CONN_* in the environment (x-airflow-common);
# fail here, before any component starts, if one is missing (output discarded: it has passwords).
for conn in atelier_ledger atelier_s3; do
  airflow connections get "$conn" -o json >/dev/null || { echo "connection $conn is not set" >&2; exit 1; }
done

# Login for the UI and REST API (simple auth manager), read by the api-server from a shared volume.
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
mkdir -p "$(dirname "$passwords")"
python - "$passwords" <<'PY'
import json, os, sys
user = os.environ["ATELIER_AIRFLOW_USER"]
with open(sys.argv[1], "w") as f:
    json.dump({user: os.environ["ATELIER_AIRFLOW_PASSWORD"]}, f)
PY
echo "airflow-init: done"
