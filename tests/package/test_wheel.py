"""Atelier from an installed wheel, not a checkout: build the wheel, install it with the runtime
lock into a fresh virtualenv, copy only dags/ elsewhere and, with the checkout off sys.path and the
working directory elsewhere, parse the DAGs with a DagBag and run steps against the local stack
(ledger migrations into a new database, the validate task on a manifest in the stack's S3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from atelier import settings as settings_mod
from atelier.settings import settings
from atelier.storage import Storage

CHECKOUT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
# What an installed package is handed by its deployment (compose, ECS, MWAA): the ledger and S3
# settings and the two Airflow connections. Nothing else crosses over from the local stack.
PASSED_ON = [
    "ATELIER_LEDGER_DSN",
    "ATELIER_S3_ENDPOINT",
    "ATELIER_REDIS_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AIRFLOW_CONN_ATELIER_LEDGER",
    "AIRFLOW_CONN_ATELIER_S3",
]


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]).lower()


def run(cmd: list[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The wheel built from this tree and a fresh virtualenv holding it and requirements.txt."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    # The build reads a copy (setuptools writes build/ and *.egg-info beside the sources), with the
    # package's links to config/ and sql/ kept as links.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("include", "config", "sql"):
        shutil.copytree(CHECKOUT / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "requirements.in"):
        shutil.copy2(CHECKOUT / name, src / name)
    timings = {}
    started = time.monotonic()
    run([UV, "build", "--wheel", "--offline", "-q", "-o", work / "dist", src])
    timings["build_s"] = round(time.monotonic() - started, 1)
    (wheel,) = (work / "dist").glob("atelier-*.whl")

    venv = work / "venv"
    started = time.monotonic()
    # From the uv cache `make venv` filled (no index needed): seconds, hard-linked, not copied.
    run([UV, "venv", "-q", "--python", sys.executable, venv])
    run(
        [UV, "pip", "install", "-q", "--offline", "-r", CHECKOUT / "requirements.txt", wheel],
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
    )
    timings["venv_s"] = round(time.monotonic() - started, 1)

    dags = work / "elsewhere" / "dags"
    shutil.copytree(CHECKOUT / "dags", dags, ignore=ignore)
    plugins = work / "elsewhere" / "plugins"
    shutil.copytree(CHECKOUT / "plugins", plugins, ignore=ignore)
    home = work / "home"
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env |= {name: os.environ.get(name) or settings_mod._get(name) for name in PASSED_ON}
    yield {"wheel": wheel, "venv": venv, "dags": dags, "env": env, "cwd": home, "timings": timings}
    print(f"\nwheel: build {timings['build_s']} s, fresh venv with requirements.txt {timings['venv_s']} s")


def in_venv(installed: dict[str, Any], code: str, **env: str) -> Any:
    """Runs ``code`` with the installed venv's python (cwd elsewhere); returns the JSON it prints last."""
    out = run(
        [installed["venv"] / "bin" / "python", "-c", code],
        env=installed["env"] | env,
        cwd=installed["cwd"],
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_wheel_carries_the_configuration_and_migrations_but_no_local_settings(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(whl.read(meta).decode())
    assert {n for n in names if n.startswith("atelier/config/")} == {
        f"atelier/config/{p.name}" for p in (CHECKOUT / "config").glob("*.json")
    }
    assert {n for n in names if n.startswith("atelier/sql/")} == {
        f"atelier/sql/{p.name}" for p in (CHECKOUT / "sql").glob("*.sql")
    }
    templates = CHECKOUT / "include" / "atelier" / "templates"
    assert {n for n in names if n.startswith("atelier/templates/")} == {
        f"atelier/templates/{p.relative_to(templates)}" for p in templates.rglob("*") if p.is_file()
    }
    leaked = [n for n in names if n.rsplit("/", 1)[-1] in {"local.env", "supervisord.conf", "buckets.txt"}]
    assert leaked == []
    # Its dependencies are requirements.in's, so `pip install <wheel> -c requirements.txt` works.
    declared = {
        dist_name(line)
        for line in (CHECKOUT / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {dist_name(r) for r in metadata.get_all("Requires-Dist")} == declared


def test_the_dags_and_plugin_load_from_other_folders_with_only_the_installed_package(installed):
    code = """
import json, os, sys
import atelier
from atelier import settings
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
from atelier import catalog
from airflow import plugins_manager
plugins = [p["name"] for p in plugins_manager.get_plugin_info()]
strategies = sorted(plugins_manager.get_priority_weight_strategy_plugins())
print(json.dumps({
    "atelier": atelier.__file__, "sys_path": sys.path, "cwd": os.getcwd(),
    "checkout": settings._checkout(), "local_env": settings._local_env(),
    "config": str(settings.config_path("brands.json")), "sql": str(settings.PACKAGE_SQL_DIR),
    "errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dag_ids),
    "refreshed": catalog.refreshed_brands(), "plugins": plugins, "strategies": strategies,
}))
"""
    got = in_venv(installed, code)
    site = str(installed["venv"] / "lib")
    assert got["atelier"].startswith(site)
    assert [p for p in got["sys_path"] if p.startswith(str(CHECKOUT))] == []
    assert not got["cwd"].startswith(str(CHECKOUT))
    assert got["checkout"] is None and got["local_env"] == {}
    assert got["config"].startswith(site) and got["sql"].startswith(site)
    assert got["errors"] == {}
    # plugins/atelier_plugin.py from a plugins folder of its own: the run priority weight strategy
    assert "atelier" in got["plugins"] and "atelier.airflow.priority.RunPriority" in got["strategies"]
    assert got["refreshed"]  # the packaged brands.json has brands with a nightly refresh
    expected = {"catalog_drop", "atelier_reaper", "atelier_notify", "campaign_published"}
    expected |= {f"catalog_refresh__{slug}" for slug in got["refreshed"]}
    assert set(got["dag_ids"]) == expected


@pytest.fixture
def fresh_ledger(uid: str) -> Iterator[str]:
    """A new, empty database beside the stack's ledger; dropped afterwards."""
    dsn = settings().ledger_dsn
    name = f"atelier_pkg_{uid}"
    admin = make_conninfo(**{**conninfo_to_dict(dsn), "dbname": "postgres"})
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(**{**conninfo_to_dict(dsn), "dbname": name})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_installed_command_migrates_a_new_ledger_from_packaged_sql(installed, fresh_ledger):
    out = run(
        [installed["venv"] / "bin" / "atelier", "db", "migrate"],
        env=installed["env"] | {"ATELIER_LEDGER_DSN": fresh_ledger},
        cwd=installed["cwd"],
    ).stdout
    versions = sorted(p.stem for p in (CHECKOUT / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    assert out.strip() == "ledger migrations applied: " + ", ".join(versions)
    with psycopg.connect(fresh_ledger) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT version FROM schema_migrations")) == versions
        assert conn.execute("SELECT to_regclass('campaigns') IS NOT NULL").fetchone() == (True,)


def test_the_validate_task_runs_from_the_wheel_against_the_stack(installed, storage: Storage, uid: str):
    """The catalog_drop DAG's first task callable, through the Airflow connections, on a manifest in
    the brand's inbox; with an override directory, a brand only its brands.json has."""
    inbox = settings().inbox_bucket

    def validate(brand: str, **env: str) -> Any:
        prefix = f"{brand}/pkg-{uid}"
        rows = [f"sku-{i},Shirt {i},tops,s3://{inbox}/{prefix}/{i}.jpg" for i in range(3)]
        manifest = ("sku,title,category,image_uri\n" + "\n".join(rows) + "\n").encode()
        storage.put(inbox, f"{prefix}/manifest.csv", manifest, "text/csv")
        params = {
            "brand": brand,
            "manifest_uri": f"s3://{inbox}/{prefix}/manifest.csv",
            "output_specs": ["thumb_320"],
            "drop_id": f"pkg-{uid}",
        }
        code = f"import json; from atelier.airflow import tasks; print(json.dumps(tasks.validate({params!r})))"
        return in_venv(installed, code, **env)

    got = validate("maison-demo")
    assert got["rows"] == 3 and got["campaign_id"]

    override = installed["cwd"] / f"override-{uid}"
    override.mkdir()
    brands = json.loads((CHECKOUT / "config" / "brands.json").read_text())
    brands["wheel-brand"] = {
        k: v for k, v in brands["maison-demo"].items() if k not in ("inbox", "catalog_feed", "timezone", "refresh_at")
    }
    (override / "brands.json").write_text(json.dumps(brands))
    assert validate("wheel-brand", ATELIER_CONFIG_DIR=str(override))["rows"] == 3
