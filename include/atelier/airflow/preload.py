"""Heavy imports done once in the Airflow processes that fork task processes, so every task
starts with them loaded instead of paying for them itself.

Measured on the 2-core machine: ``import great_expectations`` alone took 15-19 s in a task, so the
quality check of a 10-SKU drop took 16.7 s of the drop's 65 s; the check itself took 0.2 s. A
forked child shares the parent's modules (copy-on-write), the way gunicorn's ``--preload`` does.

Airflow imports this module at start-up in every one of its processes, through the
``airflow.policy`` entry point (``pyproject.toml``; those load before anything else). It defines no
policy. Only the scheduler (the LocalExecutor forks its workers from it, and they fork each task)
and a Celery worker (its pool processes fork each task) import anything; the api-server,
dag-processor and triggerer don't pay for it. Only modules that import no Airflow are listed:
this runs while Airflow itself is still being imported. Nothing here starts a thread (a fork
copies only the forking thread); a deploy restarts these processes anyway, so a task never runs
code older than its process.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

HEAVY = (
    "great_expectations",
    "pandas",
    "PIL.Image",
    "boto3",
    "psycopg",
    "httpx",
    "atelier.campaign",
    "atelier.quality",
    "atelier.rendering",
    "atelier.report",
    "atelier.providers.studio",
)


def forks_tasks(argv: Sequence[str]) -> bool:
    """``airflow scheduler`` or ``airflow celery worker`` (options aside)."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    return words[:1] == ["scheduler"] or words[:2] == ["celery", "worker"]


def preload(modules: Sequence[str] = HEAVY) -> None:
    for name in modules:
        importlib.import_module(name)


if forks_tasks(sys.argv):
    preload()
