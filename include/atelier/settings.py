"""The one settings object. Values come from the environment; for anything unset, the local
stack's defaults in ``config/local.env`` apply, so the CLI works against ``make up`` as is."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

# The project directory (config/, sql/): the checkout this file is in, unless ATELIER_ROOT says
# otherwise, as it must where the package is installed from a wheel (a worker image).
ROOT = Path(os.environ.get("ATELIER_ROOT") or Path(__file__).resolve().parents[2])
CONFIG_DIR = ROOT / "config"


def _local_env() -> dict[str, str]:
    """The values of ``config/local.env`` as ``scripts/stack.sh`` sees them when it sources the file:
    ``${VAR}`` (and ``${VAR:-default}``) resolve against the file's earlier values, then the process
    environment; ``ATELIER_ROOT`` is the checkout unless the environment sets it. Quotes are removed,
    comments and blank lines ignored; a missing file yields only ``ATELIER_ROOT``."""
    # ATELIER_ROOT goes first, as a line of the file itself, so later lines can interpolate it.
    root = os.environ.get("ATELIER_ROOT", str(ROOT)).replace("\\", "\\\\").replace("'", "\\'")
    head = f"ATELIER_ROOT='{root}'\n"
    path = CONFIG_DIR / "local.env"
    body = path.read_text() if path.exists() else ""
    parsed = dotenv_values(stream=io.StringIO(head + body), interpolate=True)
    return {key: value for key, value in parsed.items() if value is not None}


def _get(name: str, default: str = "") -> str:
    """The environment's value of ``name``, else ``config/local.env``'s, else ``default``."""
    if name in os.environ:
        return os.environ[name]
    return _local_env().get(name, default)


@dataclass(frozen=True)
class Settings:
    ledger_dsn: str = field(default_factory=lambda: _get("ATELIER_LEDGER_DSN"))
    redis_url: str = field(default_factory=lambda: _get("ATELIER_REDIS_URL"))
    s3_endpoint: str = field(default_factory=lambda: _get("ATELIER_S3_ENDPOINT"))
    s3_region: str = field(default_factory=lambda: _get("AWS_DEFAULT_REGION", "us-east-1"))
    airflow_url: str = field(default_factory=lambda: _get("ATELIER_AIRFLOW_URL"))
    airflow_user: str = field(default_factory=lambda: _get("ATELIER_AIRFLOW_USER"))
    airflow_password: str = field(default_factory=lambda: _get("ATELIER_AIRFLOW_PASSWORD"))
    statsd_host: str = field(default_factory=lambda: _get("ATELIER_STATSD_HOST", "127.0.0.1"))
    statsd_port: int = field(default_factory=lambda: int(_get("ATELIER_STATSD_PORT", "8125")))
    inbox_bucket: str = field(default_factory=lambda: _get("ATELIER_INBOX_BUCKET", "atelier-inbox"))
    renders_bucket: str = field(default_factory=lambda: _get("ATELIER_RENDERS_BUCKET", "atelier-renders"))
    reports_bucket: str = field(default_factory=lambda: _get("ATELIER_REPORTS_BUCKET", "atelier-reports"))

    def aws_env(self) -> dict[str, str]:
        """Credentials for the S3 client; from the environment, else the local stack's."""
        return {
            "aws_access_key_id": _get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": _get("AWS_SECRET_ACCESS_KEY"),
        }


@cache
def settings() -> Settings:
    return Settings()


@cache
def load_config(name: str) -> Any:
    """A JSON file from ``config/`` (output specs, brands, pools)."""
    return json.loads((CONFIG_DIR / name).read_text())
