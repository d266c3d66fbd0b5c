"""Registers with Airflow what it must know by name: the product API mounted in the api-server at
``/atelier`` (``atelier.airflow.api``), the run-priority weight strategy the scheduler orders
render shards by (``atelier.airflow.priority``) and the deadline reference catalog_drop's Deadline
Alerts are computed with (``atelier.airflow.deadlines``)."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from atelier.airflow import ui
from atelier.airflow.api import create_app
from atelier.airflow.deadlines import DropBudget
from atelier.airflow.priority import RunPriority


class AtelierPlugin(AirflowPlugin):
    name = "atelier"
    priority_weight_strategies: ClassVar[list[type]] = [RunPriority]
    deadline_references: ClassVar[list[type]] = [DropBudget]
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": "/atelier", "name": "Atelier product API"},
        {"app": ui.create_app(), "url_prefix": ui.URL_PREFIX, "name": "Atelier campaigns page"},
    ]
    # The Campaigns page in the Airflow UI's navigation, and a link from catalog_drop's tasks to it.
    external_views: ClassVar[list[dict[str, Any]]] = [ui.EXTERNAL_VIEW]
    global_operator_extra_links: ClassVar[list[Any]] = [ui.CampaignPageLink()]
