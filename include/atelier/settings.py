"""The one settings object, and where configuration comes from.

Configuration files (``brands.json``, ``specs.json``, ``providers.json``, ``pools.json``) and the
ledger migrations (``sql/*.sql``) are package data: a wheel carries them, so Atelier runs from an
installed package in any Airflow image or MWAA. ``ATELIER_CONFIG_DIR`` names a directory whose files
override the packaged ones of the same name, file by file (without it, ``$ATELIER_ROOT/config``: the
local stack's scripts/stack.sh exports ATELIER_ROOT). Settings come from the environment; for
anything unset, ``local.env`` applies: the local stack's defaults, read from the override directory,
else from the package's config directory, which only a checkout has one in (``include/atelier/config``
links to the checkout's ``config/``; the wheel takes only ``*.json`` from it). So the CLI works against
``make up`` as is, and an installed package never falls back to loopback addresses.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dotenv import dotenv_values

# The package's own data directories (in a checkout: links to the top-level config/ and sql/).
PACKAGE_CONFIG_DIR = Path(str(files("atelier") / "config"))
PACKAGE_SQL_DIR = Path(str(files("atelier") / "sql"))


def _checkout() -> Path | None:
    """The source checkout the package runs from (the directory its config link points into), or
    None for an installed wheel."""
    if not PACKAGE_CONFIG_DIR.is_symlink():
        return None
    return PACKAGE_CONFIG_DIR.resolve().parent


# Where the development tools (demo, bench, chaos, dashboards) keep .state/, out/, observability/:
# ATELIER_ROOT, else the checkout, else the current directory. Nothing a task runs reads it.
ROOT = Path(os.environ.get("ATELIER_ROOT") or _checkout() or Path.cwd())


def config_override_dir() -> Path | None:
    """The directory whose files override the packaged configuration: ``ATELIER_CONFIG_DIR``, else
    ``$ATELIER_ROOT/config`` when ``ATELIER_ROOT`` (the project directory, as scripts/stack.sh
    exports it) is set, else none."""
    if value := os.environ.get("ATELIER_CONFIG_DIR", "").strip():
        return Path(value)
    if root := os.environ.get("ATELIER_ROOT", "").strip():
        return Path(root) / "config"
    return None


def config_path(name: str) -> Path:
    """The file ``name`` of the configuration: from the override directory when it has one, else the
    packaged default. Raises FileNotFoundError naming both places when neither has it."""
    override = config_override_dir()
    if override is not None and (override / name).is_file():
        return override / name
    packaged = PACKAGE_CONFIG_DIR / name
    if not packaged.is_file():
        where = f"{override} (ATELIER_CONFIG_DIR) nor " if override is not None else ""
        raise FileNotFoundError(f"no {name} in {where}the atelier package's config ({PACKAGE_CONFIG_DIR})")
    return packaged


def _local_env_path() -> Path:
    override = config_override_dir()
    return (override if override is not None else PACKAGE_CONFIG_DIR) / "local.env"


def _local_env() -> dict[str, str]:
    """The values of ``local.env`` as ``scripts/stack.sh`` sees them when it sources the file:
    ``${VAR}`` (and ``${VAR:-default}``) resolve against the file's earlier values, then the process
    environment; ``ATELIER_ROOT`` is the directory holding the file's ``config/`` directory (the
    checkout, as stack.sh sets it) unless the environment sets it. Quotes are removed, comments and
    blank lines ignored; no file (an installed package) yields nothing."""
    path = _local_env_path()
    if not path.is_file():
        return {}
    # ATELIER_ROOT goes first, as a line of the file itself, so later lines can interpolate it.
    root = os.environ.get("ATELIER_ROOT") or str(path.resolve().parent.parent)
    root = root.replace("\\", "\\\\").replace("'", "\\'")
    parsed = dotenv_values(stream=io.StringIO(f"ATELIER_ROOT='{root}'\n" + path.read_text()), interpolate=True)
    return {key: value for key, value in parsed.items() if value is not None}


def _get(name: str, default: str = "") -> str:
    """The environment's value of ``name``, else ``local.env``'s, else ``default``."""
    if name in os.environ:
        return os.environ[name]
    return _local_env().get(name, default)


def connection_extra(value: str) -> dict[str, Any]:
    """The extra of an Airflow connection given as an ``AIRFLOW_CONN_*`` value: JSON (``"extra"`` an
    object or a JSON string) or a URI (``__extra__`` JSON, else its query parameters); {} if empty."""
    value = value.strip()
    if not value:
        return {}
    if value.startswith("{"):
        extra = json.loads(value).get("extra") or {}
        return json.loads(extra) if isinstance(extra, str) else dict(extra)
    query = parse_qs(urlsplit(value).query)
    if "__extra__" in query:
        return dict(json.loads(query["__extra__"][0]))
    return {key: values[-1] for key, values in query.items()}


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

    def s3_connection_extra(self) -> dict[str, Any]:
        """The extra of the S3 connection the tasks use (its server-side encryption applies to the
        CLI's writes too), from its ``AIRFLOW_CONN_ATELIER_S3`` variable; read only when asked for."""
        return connection_extra(_get("AIRFLOW_CONN_ATELIER_S3"))

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
    """A JSON configuration file (output specs, brands, providers, pools), from ``config_path``."""
    return json.loads(config_path(name).read_text())
