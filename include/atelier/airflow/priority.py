"""Priority that orders the provider pools: a render task's weight comes from its run's conf.

Airflow fixes ``priority_weight`` per task when the DAG is parsed, so every catalog_drop run would
weigh the same. Airflow's ``task_instance_mutation_hook`` cluster policy, though, is called with
the run at hand every time the scheduler creates or refreshes a task instance (after the weight
rule, so it has the last word) — for mapped render shards when the shard list is expanded, shard 0
included — and the scheduler hands a pool's free slots to the highest weight first (then the
oldest run). The hook reads the run's ``priority`` (catalog.PRIORITIES): a person's ``high`` drop
overtakes the remaining shards of a big ``normal`` one, and nightly refreshes (``low``) yield to
both. Shards already running keep their slots: nothing is pre-empted.

This module is an ``airflow.policy`` entry point (pyproject.toml). ``RunPriority`` is the render
tasks' weight rule (registered by ``plugins/atelier_plugin.py``, named by the DAG by import path):
it gives the ``normal`` band without touching the database, so no path can leave a shard with
Airflow's default upstream/downstream sum, and the hook sets the run's band.
"""

from __future__ import annotations

from typing import Any

from airflow.policies import hookimpl
from airflow.task.priority_strategy import PriorityWeightStrategy

from atelier import catalog

# Wide bands: Airflow adds nothing to these (no upstream/downstream sums), and ties go to the older run.
WEIGHTS = {p: 100 * (i + 1) for i, p in enumerate(catalog.PRIORITIES)}  # low 100, normal 200, high 300
DEFAULT = "normal"


class RunPriority(PriorityWeightStrategy):
    """The ``normal`` band; the cluster policy below replaces it with the run's band."""

    def get_weight(self, ti: Any) -> int:
        return WEIGHTS[DEFAULT]


RENDER_TASKS = ("catalog_drop", "render_")  # the tasks weighed by their run's priority


@hookimpl
def task_instance_mutation_hook(task_instance: Any, dag_run: Any) -> None:
    """Cluster policy: a render shard's weight from the run Airflow hands over (no DB access)."""
    dag_id, prefix = RENDER_TASKS
    if dag_run is None or task_instance.dag_id != dag_id or not task_instance.task_id.startswith(prefix):
        return
    conf = dag_run.conf if isinstance(dag_run.conf, dict) else {}
    priority = conf.get("priority")
    task_instance.priority_weight = WEIGHTS[priority if priority in WEIGHTS else DEFAULT]
