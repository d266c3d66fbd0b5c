"""Inside a task: the ledger and S3 through the Airflow connections (never the metadata DB), so
the same DAG runs on any worker that has the connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atelier.resources import Resources

LEDGER_CONN_ID = "atelier_ledger"
S3_CONN_ID = "atelier_s3"


@contextmanager
def from_connections(ledger_conn_id: str = LEDGER_CONN_ID, aws_conn_id: str = S3_CONN_ID) -> Iterator[Resources]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from atelier.resources import opened
    from atelier.storage import Storage, sse_args

    s3 = S3Hook(aws_conn_id=aws_conn_id)
    # Checked before the ledger is opened: a bad encryption setting fails the task, writing nothing.
    storage = Storage(s3.get_conn(), sse_args(s3.conn_config.extra_config))
    conn = PostgresHook(postgres_conn_id=ledger_conn_id).get_conn()
    with opened(conn, storage) as res:
        yield res


def ledger_conn(conn_id: str = LEDGER_CONN_ID) -> object:
    """A ledger connection through the Airflow connection (the caller closes it): for code that
    runs in an Airflow process outside a task (api-server plugins, deadline callbacks)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=conn_id).get_conn()


def s3_client(conn_id: str = S3_CONN_ID) -> object:
    """An S3 client through the Airflow connection, for the same callers as ``ledger_conn``."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()
