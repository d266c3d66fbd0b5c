"""Applies the numbered SQL files (package data: ``atelier/sql``, the checkout's ``sql/``) once each,
in order, under an advisory lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.settings import PACKAGE_SQL_DIR

SQL_DIR = PACKAGE_SQL_DIR
LOCK_ID = 0x41_74_65_6C  # any constant: serialises concurrent migrators


def pending(conn: Any, sql_dir: Path = SQL_DIR) -> list[Path]:
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {r[0] for r in cur.fetchall()}
    conn.commit()
    return [p for p in sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql")) if p.stem not in done]


def migrate(conn: Any, sql_dir: Path = SQL_DIR) -> list[str]:
    """Returns the versions applied now; running it again applies nothing."""
    applied = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
    try:
        for path in pending(conn, sql_dir):
            with conn.cursor() as cur:
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            conn.commit()  # each file in its own transaction: all of it or none of it
            applied.append(path.stem)
    except Exception:
        conn.rollback()
        raise
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
        conn.commit()
    return applied
