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

    def wait_for_dag(self, timeout: float = 180, dag_id: str = DAG_ID) -> None:
        """A fresh stack parses DAG files shortly after start; wait until the DAG is known (unpaused)."""
        import airflow_client.client as ac

        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = ac.DAGApi(self.api).get_dag(dag_id)
                if dag.is_paused:
                    ac.DAGApi(self.api).patch_dag(dag_id, ac.DAGPatchBody(is_paused=False), update_mask=["is_paused"])
                return
            except ac.ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise AirflowError(f"DAG {dag_id} is not available: {exc.status} {exc.reason}") from exc
                time.sleep(2)

    def trigger(
        self, run_id: str, conf: dict[str, Any], dag_id: str = DAG_ID, logical_date: Any = None
    ) -> tuple[Any, bool]:
        """Starts the run, or returns the existing run with the same id (409): (run, created)."""
        import airflow_client.client as ac

        runs = ac.DagRunApi(self.api)
        try:
            body = ac.TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=logical_date, conf=conf)
            return runs.trigger_dag_run(dag_id, body), True
        except ac.ApiException as exc:
            if exc.status == 409:
                return runs.get_dag_run(dag_id, run_id), False
            raise AirflowError(f"trigger failed: {exc.status} {exc.body}") from exc

    def run(self, run_id: str, dag_id: str = DAG_ID) -> Any:
        import airflow_client.client as ac

        return ac.DagRunApi(self.api).get_dag_run(dag_id, run_id)

    def wait(self, run_id: str, dag_id: str, timeout: float = 900) -> str:
        """Polls a run until it is over; returns its final state ("success" / "failed")."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id, dag_id)
            state = str(getattr(run.state, "value", run.state))
            if state in ("success", "failed"):
                return state
            if time.monotonic() > deadline:
                raise AirflowError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(3)

    def task_states(self, run_id: str, dag_id: str) -> dict[str, str]:
        """task id → state of a run's (unmapped) task instances."""
        import airflow_client.client as ac

        page = ac.TaskInstanceApi(self.api).get_task_instances(dag_id, run_id, limit=100)
        return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in page.task_instances}

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

    # -- the product API (atelier.airflow.api, mounted at /atelier by the Airflow plugin) -------
    def _product(self) -> httpx.Client:
        cfg = self.api.configuration
        return httpx.Client(
            base_url=f"{cfg.host.rstrip('/')}/atelier/v1",
            headers={"authorization": f"Bearer {cfg.access_token}"},
            timeout=60,
        )

    def submit_drop(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /atelier/v1/drops``: the drop of (brand, request_id), started once; a repeat
        returns the same run (``created`` false). Raises AirflowError with the server's reason."""
        with self._product() as client:
            resp = client.post("/drops", json=body)
        if resp.status_code != 200:
            raise AirflowError(f"POST /atelier/v1/drops answered {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def drop(self, dag_run_id: str) -> dict[str, Any]:
        """``GET /atelier/v1/drops/<run id>``: the run's state and, once registered, its campaign."""
        with self._product() as client:
            resp = client.get(f"/drops/{dag_run_id}")
        if resp.status_code != 200:
            raise AirflowError(f"GET /atelier/v1/drops/{dag_run_id} answered {resp.status_code}: {resp.text[:500]}")
        return resp.json()
