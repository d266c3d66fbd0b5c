"""Triggering and watching catalog drops through Airflow's REST API (official apache-airflow-client)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from atelier.settings import Settings, settings

DAG_ID = "catalog_drop"


class AirflowError(RuntimeError):
    pass


LOGIN_ATTEMPTS = 30  # x LOGIN_WAIT_S: about a minute for a starting api-server to answer
LOGIN_WAIT_S = 2.0


def token(cfg: Settings) -> str:
    """A JWT from the api-server (POST /auth/token). Connection errors and non-2xx answers are
    retried every ``LOGIN_WAIT_S`` for ``LOGIN_ATTEMPTS`` tries while the server starts; then
    ``AirflowError`` names the URL and the last failure."""

    def login() -> str:
        resp = httpx.post(
            f"{cfg.airflow_url}/auth/token",
            timeout=10,
            json={"username": cfg.airflow_user, "password": cfg.airflow_password},
        )
        if resp.status_code in (200, 201):
            return resp.json()["access_token"]
        raise AirflowError(f"POST /auth/token answered {resp.status_code}: {resp.text[:200]}")

    retrying = Retrying(
        stop=stop_after_attempt(LOGIN_ATTEMPTS),
        wait=wait_fixed(LOGIN_WAIT_S),
        retry=retry_if_exception_type((httpx.TransportError, AirflowError)),
    )
    try:
        return retrying(login)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise AirflowError(f"cannot log in to Airflow at {cfg.airflow_url}: {last}") from last


@dataclass
class Airflow:
    api: Any  # airflow_client.client.ApiClient

    @classmethod
    def connect(cls, cfg: Settings | None = None) -> Airflow:
        import airflow_client.client as ac

        cfg = cfg or settings()
        conf = ac.Configuration(host=cfg.airflow_url, access_token=token(cfg), retries=3)
        return cls(ac.ApiClient(conf))

    def wait_for_dag(self, timeout: float = 180) -> None:
        """A fresh stack parses DAG files shortly after start; wait until catalog_drop is known."""
        import airflow_client.client as ac

        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = ac.DAGApi(self.api).get_dag(DAG_ID)
                if dag.is_paused:
                    ac.DAGApi(self.api).patch_dag(DAG_ID, ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
                return
            except ac.ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise AirflowError(f"DAG {DAG_ID} is not available: {exc.status} {exc.reason}") from exc
                time.sleep(2)

    def trigger(self, run_id: str, conf: dict[str, Any]) -> tuple[Any, bool]:
        """Starts the run, or returns the existing run with the same id (409): (run, created)."""
        import airflow_client.client as ac

        runs = ac.DagRunApi(self.api)
        try:
            body = ac.TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=None, conf=conf)
            return runs.trigger_dag_run(DAG_ID, body), True
        except ac.ApiException as exc:
            if exc.status == 409:
                return runs.get_dag_run(DAG_ID, run_id), False
            raise AirflowError(f"trigger failed: {exc.status} {exc.body}") from exc

    def run(self, run_id: str) -> Any:
        import airflow_client.client as ac

        return ac.DagRunApi(self.api).get_dag_run(DAG_ID, run_id)

    def mapped_instances(self, run_id: str, provider: str = "studio") -> list[Any]:
        """The mapped render task instances of a run (task ``render_<provider>``)."""
        task_id = f"render_{provider}"
        import airflow_client.client as ac

        out, offset = [], 0
        while True:
            page = ac.TaskInstanceApi(self.api).get_mapped_task_instances(
                DAG_ID, run_id, task_id, limit=100, offset=offset
            )
            out += page.task_instances
            offset += len(page.task_instances)
            if not page.task_instances or offset >= page.total_entries:
                return out
