"""Registers Atelier's product API with Airflow's api-server (``/atelier``); the code lives in
``atelier.airflow.api``."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from atelier.airflow.api import create_app


class AtelierPlugin(AirflowPlugin):
    name = "atelier"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": "/atelier", "name": "Atelier product API"}
    ]
