"""Shared fixtures. Integration tests use the real local stack started by `make test` (make up):
Postgres (a throwaway database per session), moto's S3 server over HTTP, and Airflow for e2e."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier import ledger, providers
from atelier.migrations import migrate
from atelier.resources import Resources
from atelier.settings import settings
from atelier.storage import Storage, s3_client

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ledger_dsn() -> Iterator[str]:
    """A fresh, migrated ledger database for this test session, dropped afterwards."""
    import psycopg

    base = settings().ledger_dsn
    name = f"atelier_test_{os.getpid()}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    dsn = base.rsplit("/", 1)[0] + f"/{name}"
    conn = ledger.connect(dsn)
    migrate(conn)
    conn.close()
    yield dsn
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(ledger_dsn: str) -> Iterator[Any]:
    c = ledger.connect(ledger_dsn)
    yield c
    c.close()


@pytest.fixture(scope="session")
def storage() -> Storage:
    s = Storage(s3_client())
    cfg = settings()
    s.ensure_buckets([cfg.inbox_bucket, cfg.renders_bucket, cfg.reports_bucket])
    return s


@pytest.fixture
def bucket(storage: Storage) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    storage.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def res(conn: Any, storage: Storage) -> Resources:
    """The I/O a campaign step takes: this session's ledger and the S3 endpoint."""
    return Resources(conn, storage)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def provider_cfg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Points a provider entry elsewhere for one test (its own service name keeps its breaker,
    limiter and in-flight slots apart from everyone else's in Redis)."""
    base = providers.configs()
    overrides: dict[str, dict[str, Any]] = {}

    def override(name: str, **changes: Any) -> None:
        overrides[name] = {**base[name], **changes}
        providers.get_provider.cache_clear()

    monkeypatch.setattr(providers, "configs", lambda: {**base, **overrides})
    yield override
    providers.get_provider.cache_clear()


@pytest.fixture(autouse=True)
def no_leftover_log_context() -> Iterator[None]:
    """Steps bind their campaign to the log context for the rest of the task (``atelier.logs.bind``:
    one task per process in Airflow). Tests run many steps in one process: start each clean."""
    import structlog

    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
