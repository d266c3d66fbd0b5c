"""settings: environment first, then local.env read the way scripts/stack.sh sources it; the
configuration from package data, overridden file by file by ATELIER_CONFIG_DIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atelier import settings as settings_mod
from atelier.settings import PACKAGE_CONFIG_DIR, ROOT, Settings, config_path, connection_extra, load_config


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Points the settings at a local.env in a temporary config dir (``<tmp>/config``, so the
    project directory it interpolates as ATELIER_ROOT is ``<tmp>``); returns a writer for it."""
    (tmp_path / "config").mkdir()
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("ATELIER_ROOT", raising=False)

    def write(text: str) -> Path:
        path = tmp_path / "config" / "local.env"
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


def test_interpolates_earlier_values_and_the_project_root(env_file, tmp_path):
    env_file("STATE=${ATELIER_ROOT}/.state\nHOME_DIR=${STATE}/airflow\nLATER=${DEFINED_BELOW}x\nDEFINED_BELOW=1\n")
    values = settings_mod._local_env()
    assert values["ATELIER_ROOT"] == str(tmp_path)  # what stack.sh sets: the directory holding config/
    assert values["STATE"] == f"{tmp_path}/.state"
    assert values["HOME_DIR"] == f"{tmp_path}/.state/airflow"
    assert values["LATER"] == "x"  # only earlier lines count, as when a shell sources the file


def test_quotes_are_removed_and_single_quotes_keep_json_verbatim(env_file, tmp_path):
    env_file('A=\'{"conn_type": "aws", "extra": {"region_name": "us-east-1"}}\'\nB="double ${ATELIER_ROOT}"\n')
    values = settings_mod._local_env()
    assert json.loads(values["A"]) == {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}
    assert values["B"] == f"double {tmp_path}"


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
    """An installed package: no local.env anywhere, so nothing falls back to loopback addresses."""
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path / "absent"))
    for name in ("AWS_DEFAULT_REGION", "ATELIER_STATSD_PORT", "ATELIER_LEDGER_DSN", "ATELIER_INBOX_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    assert settings_mod._local_env() == {}
    cfg = Settings()
    assert (cfg.s3_region, cfg.statsd_port, cfg.ledger_dsn, cfg.inbox_bucket) == (
        "us-east-1",
        8125,
        "",
        "atelier-inbox",
    )


def test_the_checked_in_local_env(monkeypatch):
    """The real config/local.env, found through the package's config link without any setting:
    the values the CLI and tests rely on."""
    for name in ("ATELIER_ROOT", "ATELIER_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    values = settings_mod._local_env()
    assert values["ATELIER_LEDGER_DSN"] == "postgresql://atelier:atelier-local-pg@127.0.0.1:55432/atelier"
    assert values["AIRFLOW_HOME"] == f"{ROOT}/.state/airflow"
    assert values["PYTHONPATH"] == f"{ROOT}/include"
    conn = json.loads(values["AIRFLOW_CONN_ATELIER_S3"])
    assert conn["extra"]["endpoint_url"] == "http://127.0.0.1:55000"


def test_configuration_is_package_data_and_the_checkout_links_it():
    """The package reads its configuration and migrations from its own directory, which in a
    checkout links to the top-level config/ and sql/ (one copy of each file)."""
    checkout = Path(__file__).resolve().parents[2]
    assert PACKAGE_CONFIG_DIR.is_symlink() and PACKAGE_CONFIG_DIR.resolve() == checkout / "config"
    assert settings_mod.PACKAGE_SQL_DIR.resolve() == checkout / "sql"
    assert settings_mod._checkout() == checkout


def test_the_override_dir_wins_file_by_file(tmp_path, monkeypatch):
    (tmp_path / "specs.json").write_text('{"only_spec": {"width": 1, "height": 1, "format": "PNG"}}')
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path))
    load_config.cache_clear()
    try:
        assert list(load_config("specs.json")) == ["only_spec"]
        assert config_path("brands.json") == PACKAGE_CONFIG_DIR / "brands.json"  # not overridden
        with pytest.raises(FileNotFoundError, match=f"no nope.json in {tmp_path} .ATELIER_CONFIG_DIR. nor"):
            config_path("nope.json")
    finally:
        load_config.cache_clear()


def test_atelier_root_is_the_override_dir_when_no_config_dir_is_named(tmp_path, monkeypatch):
    """The local stack (stack.sh exports ATELIER_ROOT) keeps reading the checkout's config/ even where
    the package is installed from a wheel; ATELIER_CONFIG_DIR, when set, wins over it."""
    monkeypatch.delenv("ATELIER_CONFIG_DIR", raising=False)
    monkeypatch.setenv("ATELIER_ROOT", str(tmp_path))
    assert settings_mod.config_override_dir() == tmp_path / "config"
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert settings_mod.config_override_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ATELIER_ROOT")
    monkeypatch.delenv("ATELIER_CONFIG_DIR")
    assert settings_mod.config_override_dir() is None


@pytest.mark.parametrize(
    ("value", "extra"),
    [
        ("", {}),
        ('{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}', {"region_name": "eu-west-1"}),
        ('{"conn_type": "aws", "extra": "{\\"region_name\\": \\"eu-west-1\\"}"}', {"region_name": "eu-west-1"}),
        ('{"conn_type": "aws"}', {}),
        (
            "aws://k:s@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2Fminio%3A9000",
            {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000"},
        ),
        (
            "aws://?__extra__=%7B%22service_config%22%3A+%7B%22s3%22%3A+%7B%7D%7D%7D",
            {"service_config": {"s3": {}}},
        ),
    ],
)
def test_connection_extra_from_an_airflow_conn_variable(value, extra):
    assert connection_extra(value) == extra


def test_an_installed_package_without_a_checkout(tmp_path):
    """A worker that installs the package as a wheel has no checkout around it: the configuration is
    the package's own (here: a copy of the package without the config link, as a wheel installs it),
    ATELIER_CONFIG_DIR overrides it file by file, and no local.env is read."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(
        PACKAGE_CONFIG_DIR.parent,
        site / "atelier",
        symlinks=False,
        ignore=shutil.ignore_patterns("__pycache__", "local.env", "*.conf", "*.txt"),
    )
    override = tmp_path / "override"
    override.mkdir()
    (override / "specs.json").write_text('{"only_spec": {"width": 1, "height": 1, "format": "PNG"}}')
    code = (
        "import json; from atelier.settings import _checkout, _local_env, load_config, settings;"
        "print(json.dumps([_checkout(), _local_env(), list(load_config('specs.json')), 'maison-demo' in load_config('brands.json'), settings().ledger_dsn]))"
    )
    drop = {"PYTHONPATH", "ATELIER_ROOT", "ATELIER_LEDGER_DSN"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | {
        "PYTHONPATH": str(site),
        "ATELIER_CONFIG_DIR": str(override),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == [None, {}, ["only_spec"], True, ""]
