"""The heavy imports the processes that fork tasks do once (atelier.airflow.preload)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from atelier.airflow import preload


@pytest.mark.parametrize(
    ("argv", "forks"),
    [
        (["airflow", "scheduler"], True),
        (["/venv/bin/airflow", "scheduler", "--skip-serve-logs"], True),
        (["airflow", "celery", "worker", "--celery-hostname", "w1"], True),
        (["airflow", "--verbose", "celery", "worker"], True),
        (["airflow", "api-server"], False),
        (["airflow", "dag-processor"], False),
        (["airflow", "triggerer"], False),
        (["airflow", "celery", "flower"], False),
        (["airflow", "tasks", "test", "catalog_drop", "scheduler"], False),
        (["python", "-m", "pytest"], False),
    ],
)
def test_only_the_processes_that_fork_tasks_preload(argv: list[str], forks: bool):
    assert preload.forks_tasks(argv) is forks


def test_airflow_loads_it_at_start_through_the_policy_entry_point():
    found = {e.name: e.value for e in entry_points(group="airflow.policy")}
    assert found["atelier_preload"] == "atelier.airflow.preload"


def test_the_preload_imports_no_airflow_and_starts_no_thread():
    """It runs while Airflow itself is being imported, and before the scheduler forks its workers."""
    code = (
        "import sys, threading; sys.argv = ['airflow', 'scheduler']; import atelier.airflow.preload as p; "
        "missing = [m for m in p.HEAVY if m not in sys.modules]; "
        "airflow = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')); "
        "print(missing, airflow, threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] [] 1"
