"""settings: environment first, then config/local.env read the way scripts/stack.sh sources it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atelier import settings as settings_mod
from atelier.settings import ROOT, Settings


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Points the settings at a local.env in a temporary config dir; returns a writer for it."""
    monkeypatch.setattr(settings_mod, "CONFIG_DIR", tmp_path)
    monkeypatch.delenv("ATELIER_ROOT", raising=False)

    def write(text: str) -> Path:
        path = tmp_path / "local.env"
        path.write_text(text)
        return path

    return write


def test_environment_wins_over_the_file(env_file, monkeypatch):
    env_file("ATELIER_REDIS_URL=redis://from-file:1/0\nATELIER_S3_ENDPOINT=http://from-file:2\n")
    monkeypatch.setenv("ATELIER_REDIS_URL", "redis://from-env:3/0")
    monkeypatch.delenv("ATELIER_S3_ENDPOINT", raising=False)
    cfg = Settings()
    assert cfg.redis_url == "redis://from-env:3/0"
    assert cfg.s3_endpoint == "http://from-file:2"


def test_interpolates_earlier_values_and_the_checkout_root(env_file):
    env_file("STATE=${ATELIER_ROOT}/.state\nHOME_DIR=${STATE}/airflow\nLATER=${DEFINED_BELOW}x\nDEFINED_BELOW=1\n")
    values = settings_mod._local_env()
    assert values["ATELIER_ROOT"] == str(ROOT)
    assert values["STATE"] == f"{ROOT}/.state"
    assert values["HOME_DIR"] == f"{ROOT}/.state/airflow"
    assert values["LATER"] == "x"  # only earlier lines count, as when a shell sources the file


def test_quotes_are_removed_and_single_quotes_keep_json_verbatim(env_file):
    env_file('A=\'{"conn_type": "aws", "extra": {"region_name": "us-east-1"}}\'\nB="double ${ATELIER_ROOT}"\n')
    values = settings_mod._local_env()
    assert json.loads(values["A"]) == {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}
    assert values["B"] == f"double {ROOT}"


def test_comments_blank_lines_and_export_lines(env_file):
    env_file("# a comment\n\nexport PORT=55432\nHOST=127.0.0.1  # the loopback\nNOVALUE\n")
    values = settings_mod._local_env()
    assert values["PORT"] == "55432"
    assert values["HOST"] == "127.0.0.1"
    assert "NOVALUE" not in values
    assert not any(k.startswith("#") for k in values)


def test_unset_names_resolve_from_the_process_environment_or_a_default(env_file, monkeypatch):
    """What stack.sh gets when it sources the file: ${VAR} from the environment, ${VAR:-d} defaults."""
    monkeypatch.setenv("ATELIER_TEST_HOST", "db.internal")
    monkeypatch.delenv("ATELIER_TEST_UNSET", raising=False)
    env_file(
        "DSN=postgresql://${ATELIER_TEST_HOST}:5432/x\nPORT=${ATELIER_TEST_UNSET:-8125}\nEMPTY=${ATELIER_TEST_UNSET}\n"
    )
    values = settings_mod._local_env()
    assert values["DSN"] == "postgresql://db.internal:5432/x"
    assert values["PORT"] == "8125"
    assert values["EMPTY"] == ""


def test_atelier_root_from_the_environment_is_used_for_interpolation(env_file, monkeypatch):
    monkeypatch.setenv("ATELIER_ROOT", "/srv/atelier's checkout")
    env_file("AIRFLOW_HOME=${ATELIER_ROOT}/.state/airflow\n")
    values = settings_mod._local_env()
    assert values["AIRFLOW_HOME"] == "/srv/atelier's checkout/.state/airflow"


def test_missing_file_leaves_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_mod, "CONFIG_DIR", tmp_path / "absent")
    monkeypatch.delenv("ATELIER_ROOT", raising=False)
    for name in ("AWS_DEFAULT_REGION", "ATELIER_STATSD_PORT", "ATELIER_LEDGER_DSN", "ATELIER_INBOX_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    assert settings_mod._local_env() == {"ATELIER_ROOT": str(ROOT)}
    cfg = Settings()
    assert (cfg.s3_region, cfg.statsd_port, cfg.ledger_dsn, cfg.inbox_bucket) == (
        "us-east-1",
        8125,
        "",
        "atelier-inbox",
    )


def test_the_checked_in_local_env(monkeypatch):
    """The real config/local.env: the values the CLI and tests rely on."""
    monkeypatch.delenv("ATELIER_ROOT", raising=False)
    values = settings_mod._local_env()
    assert values["ATELIER_LEDGER_DSN"] == "postgresql://atelier:atelier-local-pg@127.0.0.1:55432/atelier"
    assert values["AIRFLOW_HOME"] == f"{ROOT}/.state/airflow"
    assert values["PYTHONPATH"] == f"{ROOT}/include"
    conn = json.loads(values["AIRFLOW_CONN_ATELIER_S3"])
    assert conn["extra"]["endpoint_url"] == "http://127.0.0.1:55000"


def test_atelier_root_locates_config_for_an_installed_package(tmp_path):
    """A worker that installs the package as a wheel has no checkout around it: ATELIER_ROOT
    points at the project directory holding config/."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "specs.json").write_text('{"only_spec": {"width": 1, "height": 1, "format": "PNG"}}')
    (tmp_path / "config" / "local.env").write_text("ATELIER_REDIS_URL=redis://${ATELIER_ROOT}/0\n")
    code = (
        "from atelier.settings import CONFIG_DIR, load_config, _local_env;"
        "print(CONFIG_DIR); print(list(load_config('specs.json'))); print(_local_env()['ATELIER_REDIS_URL'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_REDIS_URL"} | {"ATELIER_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(tmp_path / "config"), "['only_spec']", f"redis://{tmp_path}/0"]
