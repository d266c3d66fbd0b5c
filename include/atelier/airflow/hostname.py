"""The host name a process reports to Airflow (`[core] hostname_callable`): it is what a task
instance's `hostname` shows and what `airflow jobs check --hostname` matches."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """`ATELIER_HOSTNAME` when set, else the machine's FQDN (Airflow's default).

    The local stack's Celery workers share one machine but stand for separate ones
    (`make up EXECUTOR=celery WORKERS=2`): each gets its own name, so a task instance says which
    worker ran it. In containers or on real machines nothing sets it and the FQDN is used."""
    return os.environ.get("ATELIER_HOSTNAME") or socket.getfqdn()
