"""The I/O every campaign step and render takes explicitly: a ledger connection and S3 storage.

Steps never open these themselves, so tests run them against the real Postgres and S3 endpoint
without Airflow. The CLI and tests open them with ``local()``; Airflow tasks open theirs from
Airflow connections with ``atelier.airflow.resources.from_connections()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # storage pulls in Pillow via images: not at DAG parse time
    from atelier.storage import Storage


@dataclass
class Resources:
    conn: Any  # psycopg connection to the ledger
    storage: Storage
    # One ledger connection per task: the lease keeper's renewals and the recording of outcomes
    # take turns on it (each ledger call is one transaction).
    lock: threading.RLock = field(default_factory=threading.RLock)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def opened(conn: Any, storage: Storage) -> Iterator[Resources]:
    """Hands out ``Resources`` and closes the ledger connection however the block ends."""
    res = Resources(conn, storage)
    try:
        yield res
    finally:
        res.close()


@contextmanager
def local() -> Iterator[Resources]:
    """The ledger and S3 from the settings (CLI, tests, tools outside Airflow)."""
    from atelier import ledger
    from atelier.settings import settings
    from atelier.storage import local_storage

    with opened(ledger.connect(settings().ledger_dsn), local_storage()) as res:
        yield res
