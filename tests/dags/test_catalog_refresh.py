"""The nightly refresh DAGs: one per refreshed brand, scheduled in the brand's own zone, DST-correct."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from atelier import catalog

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "catalog_refresh.py"))
    assert bag.import_errors == {}
    return bag.dags


def runs_between(dag, start: datetime, end: datetime) -> list[datetime]:
    """The run times the DAG's timetable schedules in [start, end), as the scheduler asks for them."""
    from airflow.timetables.base import TimeRestriction

    out, last = [], None
    restriction = TimeRestriction(earliest=start, latest=end, catchup=True)
    while (
        info := dag.timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    ) is not None:
        out.append(info.run_after)
        last = info.data_interval
    return out


def test_one_dag_per_refreshed_brand(dags):
    assert {d for d in dags if d.startswith("catalog_refresh__")} == {
        f"catalog_refresh__{b}" for b in catalog.refreshed_brands()
    }


@pytest.mark.parametrize(
    ("night_utc", "local"),
    [
        ("2026-03-29T00:00:00+00:00", "03:30"),  # Paris skips 02:00–03:00: the refresh still runs, once
        ("2026-10-25T00:00:00+00:00", "02:30"),  # Paris has 02:30 twice: the refresh runs once
        ("2026-03-28T00:00:00+00:00", "02:30"),
    ],
)
def test_a_refresh_runs_exactly_once_a_night_across_dst(dags, night_utc: str, local: str):
    from zoneinfo import ZoneInfo

    start = datetime.fromisoformat(night_utc)
    runs = runs_between(dags["catalog_refresh__nightly-paris"], start, start + timedelta(hours=23, minutes=59))
    assert len(runs) == 1
    assert runs[0].astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M") == local


def test_brands_refresh_in_their_own_zone(dags):
    start = datetime.fromisoformat("2026-11-28T12:00:00+00:00")
    ny = runs_between(dags["catalog_refresh__nightly-ny"], start, start + timedelta(days=1))
    paris = runs_between(dags["catalog_refresh__nightly-paris"], start, start + timedelta(days=1))
    assert [r.isoformat() for r in ny] == ["2026-11-29T04:15:00+00:00"]  # 23:15 EST
    assert [r.isoformat() for r in paris] == ["2026-11-29T01:30:00+00:00"]  # 02:30 CET
