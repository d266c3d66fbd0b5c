#!/usr/bin/env bash
# The api-server (compose service airflow-apiserver, ECS service api-server): writes the simple
# auth manager's login file from ATELIER_AIRFLOW_USER / ATELIER_AIRFLOW_PASSWORD, then runs
# `airflow api-server`. The file lives in the container; only the api-server reads it.
set -euo pipefail
python - "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}" <<'PY'
import json
import os
import sys

with open(sys.argv[1], "w") as f:
    json.dump({os.environ["ATELIER_AIRFLOW_USER"]: os.environ["ATELIER_AIRFLOW_PASSWORD"]}, f)
os.chmod(sys.argv[1], 0o600)
PY
exec airflow api-server "$@"
