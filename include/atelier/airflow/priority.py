"""Priority that orders the provider pools: a render task's weight comes from its run's conf.

Airflow fixes ``priority_weight`` per task when the DAG is parsed, so every catalog_drop run would
weigh the same. A ``PriorityWeightStrategy`` is asked for each task instance when the scheduler
creates it — for mapped render shards, when the shard list is expanded, after the run exists — and
the scheduler hands a pool's free slots to the highest weight first (then the oldest run). This
one reads the run's ``priority`` (catalog.PRIORITIES): a person's ``high`` drop overtakes the
remaining shards of a big ``normal`` one, and nightly refreshes (``low``) yield to both. Shards
already running keep their slots: nothing is pre-empted.

Registered by ``plugins/atelier_plugin.py`` (the scheduler must be able to deserialize it); DAGs
name it by its import path, so DAG files import nothing of Airflow's core.

The strategy alone misses one task instance per mapped task: the placeholder created with the run
(before its conf is committed, so it weighs ``normal``) becomes shard 0 at expansion without being
weighed again. Airflow calls the ``task_instance_mutation_hook`` cluster policy for that one, with
the run at hand, so this module is also an ``airflow.policy`` entry point (pyproject.toml) whose
hook sets the same weight.
"""

from __future__ import annotations

from typing import Any

from airflow.policies import hookimpl
from airflow.task.priority_strategy import PriorityWeightStrategy

from atelier import catalog

# Wide bands: Airflow adds nothing to these (no upstream/downstream sums), and ties go to the older run.
WEIGHTS = {p: 100 * (i + 1) for i, p in enumerate(catalog.PRIORITIES)}  # low 100, normal 200, high 300
DEFAULT = "normal"
_confs: dict[tuple[str, str], str] = {}  # (dag_id, run_id) → priority; a run's conf never changes


def run_priority(dag_id: str, run_id: str) -> str | None:
    """The ``priority`` in a run's conf, read from the metadata DB (the scheduler's own); None when
    the run is not visible yet (its creating transaction has not committed) or has none."""
    if (dag_id, run_id) in _confs:
        return _confs[(dag_id, run_id)]
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    # Its own connection, never the scheduler's scoped session: closing that session (as
    # create_session does) would detach the objects the scheduler is in the middle of using.
    with settings.engine.connect() as db:
        found = db.execute(select(DagRun.conf).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
    if found is None:
        return None
    priority = (found[0] or {}).get("priority") if isinstance(found[0], dict) else None
    value = priority if priority in WEIGHTS else DEFAULT
    if len(_confs) > 10_000:
        _confs.clear()
    _confs[(dag_id, run_id)] = value
    return value


class RunPriority(PriorityWeightStrategy):
    """Weight = the band of the run's ``priority`` (low 100, normal 200, high 300)."""

    def get_weight(self, ti: Any) -> int:
        try:
            priority = run_priority(ti.dag_id, ti.run_id)
        except Exception:  # never fail task creation over a weight: the default band is safe
            priority = None
        return WEIGHTS[priority or DEFAULT]


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
