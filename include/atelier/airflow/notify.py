"""Task callables for webhook notifications: signing secrets from Airflow connections, and the
``atelier_notify`` DAG's delivery pass over the outbox."""

from __future__ import annotations

from typing import Any

from atelier.airflow.resources import LEDGER_CONN_ID


def secret(conn_id: str) -> str:
    """The password of the Airflow connection ``conn_id`` (any secrets backend Airflow is set up
    with: environment, metadata DB, Vault, ...). Raises ``SecretUnavailable`` naming the
    connection, never a value."""
    from airflow.sdk import BaseHook

    from atelier.notify import SecretUnavailable

    try:
        password = BaseHook.get_connection(conn_id).password
    except Exception as exc:  # not defined, or the backend failed: say which, not what it said
        raise SecretUnavailable(f"no signing secret: connection {conn_id!r} ({type(exc).__name__})") from None
    if not password:
        raise SecretUnavailable(f"no signing secret: connection {conn_id!r} has no password")
    return password


def deliver(budget_s: float = 50.0) -> dict[str, Any]:
    """One delivery pass: sends every event that is due (in order per campaign and subscriber),
    records retries and dead letters, then reports the outbox gauges to statsd."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from atelier import notify

    conn = PostgresHook(postgres_conn_id=LEDGER_CONN_ID).get_conn()
    try:
        done = notify.deliver_due(conn, secret, budget_s=budget_s)
        state = notify.report_gauges(conn)
    finally:
        conn.close()
    out = {**vars(done), "depth": state.depth, "oldest_age_s": state.oldest_age_s, "dead_letters": state.dead_letters}
    print(out)
    return out
