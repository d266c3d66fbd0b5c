"""docker-compose.airflow.yml and docker/, checked statically (no Docker engine runs on the build
machines): the Compose specification schema, healthchecks/restart/depends_on, pinned images, parity
with the local stack's settings (config/local.env, scripts/stack.sh), no secret beyond the
documented local defaults, and every file the stack mounts or the image copies exists. Each check
is a function returning its problems; each test also shows it catching a deliberately broken copy."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from dotenv import dotenv_values

from tests.deploy.tooling import ROOT, load_yaml, run, tool

COMPOSE = ROOT / "docker-compose.airflow.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
LOCAL_ENV = ROOT / "config" / "local.env"
CELERY_ENV = ROOT / "config" / "celery.env"
STACK_SH = ROOT / "scripts" / "stack.sh"

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
]
OBSERVABILITY = ["statsd-exporter", "prometheus", "alertmanager", "grafana"]
REQUIRED = ["postgres", "redis", "minio", "minio-init", "refservice", "airflow-init", *AIRFLOW_SERVICES, *OBSERVABILITY]
# The one setting the browser, not a container, uses: it may name localhost.
BROWSER_FACING = {"AIRFLOW__API__BASE_URL"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$|ACCESS_KEY")
# An exact version: 1.2.3, v1.2.3 (an OS suffix may follow) or MinIO's RELEASE.<timestamp>.
PINNED_TAG = re.compile(r"^(v?\d+\.\d+\.\d+(-[a-z0-9.]+)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$")
# Postgres releases have had two-part versions since 10 (15.10 is a patch release of 15).
PINNED_TAG_OF = {"postgres": re.compile(r"^\d+\.\d+(-[a-z]+)?$")}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


# -- compose interpolation -----------------------------------------------------------------------
_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """``value`` as Compose resolves it with ``env`` (default: nothing set, so every default applies):
    ``$$`` is a literal ``$``, ``${X:-d}``/``${X-d}`` default, ``${X:?e}`` requires X."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return arg if val is None else val
        if op in (":?", "?"):
            if not val:
                raise ValueError(f"{name} is required: {arg}")
            return val
        return val or ""

    return _VAR.sub(one, value)


def common_env(compose: dict[str, Any]) -> dict[str, str]:
    """x-airflow-common's environment, interpolated with every default."""
    return {k: interpolate(str(v)) for k, v in compose["x-airflow-common"]["environment"].items()}


# -- the local stack's settings ------------------------------------------------------------------
def local_settings(path: Path = LOCAL_ENV, overlay: Path | None = CELERY_ENV) -> dict[str, str]:
    """config/local.env with config/celery.env on top, as scripts/stack.sh sources them for
    `make up EXECUTOR=celery` (the executor compose runs); ATELIER_ROOT = the checkout."""
    text = f"ATELIER_ROOT='{ROOT}'\n" + path.read_text() + ("\n" + overlay.read_text() if overlay else "")
    parsed = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {k: v or "" for k, v in parsed.items() if k != "ATELIER_ROOT"}


def stack_secrets(path: Path = STACK_SH) -> set[str]:
    """The settings scripts/stack.sh generates into .state/secrets.env."""
    text = path.read_text()
    return set(re.findall(r'echo "([A-Z][A-Z0-9_]+)=', text)) | set(re.findall(r"\^([A-Z][A-Z0-9_]+)=", text))


def normalized(value: str) -> Any:
    """A setting with every URL's host and port replaced (credentials, scheme, path, query kept);
    JSON (an Airflow connection) walked the same way."""
    text = value.strip()
    if text.startswith("{"):
        try:
            return _walk(json.loads(text))
        except json.JSONDecodeError:
            pass
    return _walk(text)


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v) for v in value]
    if isinstance(value, str) and re.match(r"^[a-z][a-z0-9+.-]*://", value):
        parts = urlsplit(value)
        userinfo = ""
        if parts.username is not None:
            userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "") + "@"
        return urlunsplit((parts.scheme, userinfo + "<host>", parts.path, parts.query, parts.fragment))
    return value


def parity_problems(compose: dict[str, Any], local: dict[str, str], secrets: set[str]) -> list[str]:
    """Each local stack setting has the same value in x-airflow-common (up to URL host/port), or is
    listed in x-local-stack-differs with a reason; the list names only real settings; every secret
    stack.sh generates is set in compose too."""
    env = common_env(compose)
    differs = compose.get("x-local-stack-differs", {})
    problems = []
    for name, value in local.items():
        if name in differs:
            continue
        if name not in env:
            problems.append(f"{name}: set in config/local.env, missing from x-airflow-common")
        elif normalized(env[name]) != normalized(value):
            problems.append(f"{name}: {env[name]!r} in compose, {value!r} locally (not in x-local-stack-differs)")
    for name, reason in differs.items():
        if name not in local:
            problems.append(f"x-local-stack-differs: {name} is not a setting of config/local.env")
        if not str(reason or "").strip():
            problems.append(f"x-local-stack-differs: {name} has no reason")
    for name in sorted(secrets - env.keys()):
        problems.append(f"{name}: generated by scripts/stack.sh, missing from x-airflow-common")
    return problems


def test_every_local_stack_setting_has_its_compose_counterpart(compose):
    local, secrets = local_settings(), stack_secrets()
    # The readers found what they must (an empty problem list means something).
    assert {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW_CONN_ATELIER_S3", "ATELIER_LEDGER_DSN"} <= local.keys()
    assert {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "ATELIER_REFSERVICE_ADMIN_TOKEN"} <= secrets
    assert parity_problems(compose, local, secrets) == []

    broken = copy.deepcopy(compose)
    env = broken["x-airflow-common"]["environment"]
    del env["AIRFLOW__CORE__MAX_MAP_LENGTH"]
    env["AIRFLOW_CONN_ATELIER_LEDGER"] = env["AIRFLOW_CONN_ATELIER_LEDGER"].replace("/atelier", "/airflow")
    env["AIRFLOW_CONN_ATELIER_S3"] = env["AIRFLOW_CONN_ATELIER_S3"].replace("us-east-1", "eu-west-1")
    broken["x-local-stack-differs"]["AIRFLOW__NOT__A_SETTING"] = "stale"
    del env["AIRFLOW__API_AUTH__JWT_SECRET"]
    found = "\n".join(parity_problems(broken, local, secrets))
    for name in [
        "MAX_MAP_LENGTH",
        "AIRFLOW_CONN_ATELIER_LEDGER",
        "AIRFLOW_CONN_ATELIER_S3",
        "NOT__A_SETTING",
        "JWT_SECRET",
    ]:
        assert name in found


def test_normalization_keeps_everything_but_host_and_port():
    a = "postgresql://atelier:atelier@127.0.0.1:55432/atelier"
    assert normalized(a) == normalized("postgresql://atelier:atelier@postgres:5432/atelier")
    assert normalized(a) != normalized("postgresql://atelier:other@postgres:5432/atelier")
    assert normalized(a) != normalized("postgresql://atelier:atelier@postgres:5432/airflow")
    assert normalized('{"extra": {"endpoint_url": "http://127.0.0.1:55000"}}') == normalized(
        '{"extra": {"endpoint_url": "http://minio:9000"}}'
    )
    assert interpolate("a${X:-b}c$${HOSTNAME}") == "abc${HOSTNAME}"
    assert interpolate("${X:-b}", {"X": "y"}) == "y"


# -- where containers point ----------------------------------------------------------------------
def address_problems(compose: dict[str, Any], providers: dict[str, Any]) -> list[str]:
    """Containers reach each other by service name: no setting (except the browser-facing base
    URL) points at loopback, every URL host is a service, and every provider whose configured URL
    is loopback (config/providers.json) is moved to a service by ATELIER_PROVIDER_<NAME>_URL."""
    env = common_env(compose)
    services = set(compose["services"])
    problems = []
    for name, value in env.items():
        # An s3:// URL names a bucket, not a host.
        urls = [u for u in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"']+", value) if not u.startswith("s3://")]
        hosts = [urlsplit(u).hostname for u in urls]
        if name.endswith("_HOST"):
            hosts.append(value)
        for host in hosts:
            if name in BROWSER_FACING:
                continue
            if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") and not name.endswith("API__HOST"):
                problems.append(f"{name}: points at {host} inside a container")
            elif host not in services and host not in ("0.0.0.0",):
                problems.append(f"{name}: host {host!r} is not a service of this file")
    for name, cfg in providers.items():
        host = urlsplit(cfg.get("url") or "").hostname
        if host in ("localhost", "127.0.0.1", "::1"):
            override = env.get(f"ATELIER_PROVIDER_{name.upper()}_URL")
            if override is None:
                problems.append(f"provider {name}: {cfg['url']} is loopback and compose does not move it")
            elif urlsplit(override).hostname not in services:
                problems.append(f"provider {name}: {override} is not a service of this file")
    return problems


def test_containers_reach_each_other_by_service_name(compose):
    providers = json.loads((ROOT / "config" / "providers.json").read_text())
    assert address_problems(compose, providers) == []

    broken = copy.deepcopy(compose)
    env = broken["x-airflow-common"]["environment"]
    env["ATELIER_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    env["ATELIER_S3_ENDPOINT"] = "http://s3:9000"
    del env["ATELIER_PROVIDER_REFSERVICE_DEFERRED_URL"]
    found = "\n".join(address_problems(broken, providers))
    assert "ATELIER_REDIS_URL" in found and "ATELIER_S3_ENDPOINT" in found and "refservice_deferred" in found


def test_the_reference_service_runs_with_the_local_stacks_quota(compose):
    """stack.sh's `refservice serve` flags (but host and port) are the compose service's."""
    line = next(x for x in STACK_SH.read_text().splitlines() if "refservice serve" in x)

    def flags(cmd: str) -> dict[str, str]:
        pairs = dict(re.findall(r"(--[a-z-]+)[ =](\S+)", cmd))
        return {k: v for k, v in pairs.items() if k not in ("--host", "--port")}

    local = flags(line)
    assert local, line
    command = " ".join(compose["services"]["refservice"]["command"])
    assert flags(command) == local


# -- the Compose specification -------------------------------------------------------------------
def schema_check(path: Path) -> tuple[int, str]:
    out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path])
    return out.returncode, out.stdout + out.stderr


def test_the_compose_file_matches_the_compose_specification(tmp_path):
    code, output = schema_check(COMPOSE)
    assert code == 0, output

    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text().replace("    restart: always\n", "    restart: always\n    healthchek: {}\n", 1)
    assert text != COMPOSE.read_text()
    broken.write_text(text)
    code, output = schema_check(broken)
    assert code != 0 and "healthchek" in output


# -- services: healthchecks, restart, depends_on -------------------------------------------------
def one_shots(compose: dict[str, Any]) -> set[str]:
    """Services something waits on to complete: they run once and exit."""
    return {
        dep
        for svc in compose["services"].values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }


def service_problems(compose: dict[str, Any]) -> list[str]:
    services = compose["services"]
    once = one_shots(compose)
    problems = [f"{name}: missing" for name in REQUIRED if name not in services]
    for name in OBSERVABILITY:
        if name in services and "observability" not in services[name].get("profiles", []):
            problems.append(f"{name}: not in the observability profile")
    for name, svc in services.items():
        if name not in once:
            test = (svc.get("healthcheck") or {}).get("test")
            if not test or test == ["NONE"] or (svc.get("healthcheck") or {}).get("disable"):
                problems.append(f"{name}: long-running without a healthcheck")
            if svc.get("restart") not in ("always", "unless-stopped", "on-failure"):
                problems.append(f"{name}: restart is {svc.get('restart')!r}")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for dep, cond in deps.items():
            condition = (cond or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown {dep}")
                continue
            if condition == "service_healthy" and not (services[dep].get("healthcheck") or {}).get("test"):
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            if condition == "service_started" or condition is None:
                problems.append(f"{name}: depends on {dep} without a health or completion condition")
            if not services[dep].get("profiles") or svc.get("profiles"):
                continue
            problems.append(
                f"{name}: always started but depends on {dep}, only in profiles {services[dep]['profiles']}"
            )
    for name in AIRFLOW_SERVICES:
        conds = services.get(name, {}).get("depends_on") or {}
        if conds.get("airflow-init", {}).get("condition") != "service_completed_successfully":
            problems.append(f"{name}: starts before airflow-init completes")
    return problems


def test_every_long_running_service_has_a_healthcheck_restart_policy_and_conditions(compose):
    assert one_shots(compose) == {"airflow-init", "minio-init"}
    assert service_problems(compose) == []

    broken = copy.deepcopy(compose)
    del broken["services"]["airflow-triggerer"]["healthcheck"]
    broken["services"]["redis"]["restart"] = "no"
    broken["services"]["airflow-scheduler"]["depends_on"]["airflow-init"] = {"condition": "service_started"}
    broken["services"]["airflow-worker"]["depends_on"]["prometheus"] = {"condition": "service_healthy"}
    del broken["services"]["grafana"]["profiles"]
    found = "\n".join(service_problems(broken))
    assert "airflow-triggerer: long-running without a healthcheck" in found
    assert "redis: restart" in found
    assert "airflow-scheduler: starts before airflow-init" in found
    assert "airflow-worker: always started but depends on prometheus" in found
    assert "grafana: not in the observability profile" in found


# -- images --------------------------------------------------------------------------------------
def image_problems(compose: dict[str, Any], dockerfile: str, airflow_pin: str) -> list[str]:
    """Every image carries an exact version tag; the Atelier image is built FROM the official
    Airflow image at the version requirements.txt pins, on Python 3.11."""
    problems = []
    for name, svc in compose["services"].items():
        image = interpolate(svc.get("image", ""))
        if not image:
            problems.append(f"{name}: no image")
            continue
        repo, _, tag = image.rpartition(":")
        if not repo or "/" in tag or not PINNED_TAG_OF.get(repo, PINNED_TAG).match(tag):
            problems.append(f"{name}: image {image!r} is not pinned to an exact version")
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    want = f"apache/airflow:{airflow_pin}-python3.11"
    if froms != [want]:
        problems.append(f"docker/Dockerfile: FROM {froms}, want [{want!r}]")
    return problems


def airflow_pin() -> str:
    match = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt pins no apache-airflow"
    return match.group(1)


def test_images_are_pinned(compose):
    dockerfile = DOCKERFILE.read_text()
    assert image_problems(compose, dockerfile, airflow_pin()) == []

    broken = copy.deepcopy(compose)
    broken["services"]["redis"]["image"] = "redis:7"
    broken["services"]["grafana"]["image"] = "grafana/grafana:latest"
    broken["services"]["minio"]["image"] = "minio/minio"
    broken["services"]["postgres"]["image"] = "postgres:15"
    found = "\n".join(image_problems(broken, dockerfile.replace("3.11", "3.12"), airflow_pin()))
    assert all(s in found for s in ["redis:", "grafana:", "minio:", "postgres:", "docker/Dockerfile"])


def test_the_image_installs_only_the_runtime_lock_and_the_package():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs == [
        "pip install --no-cache-dir -r /opt/atelier/requirements.txt",
        "pip install --no-cache-dir --no-deps /tmp/atelier-src && rm -rf /tmp/atelier-src",
    ]
    assert "requirements-dev" not in text


# -- secrets -------------------------------------------------------------------------------------
def documented_defaults(text: str) -> str:
    """The file's leading comment block: where the local defaults are documented."""
    head = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    return "\n".join(head)


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, str(node))] if node is not None else []


_CREDENTIAL_IN_URL = re.compile(r"://(?P<user>(?:\$\{[^}]*\}|[^:/@\s$])+):(?P<password>(?:\$\{[^}]*\}|[^@\s$])+)@")
_JSON_PASSWORD = re.compile(r'"password"\s*:\s*"(?P<password>[^"]*)"')


def secret_problems(compose: dict[str, Any], header: str) -> list[str]:
    """Every credential (a setting named like one, a URL's password, a connection's password) is a
    ``${VAR:-default}`` interpolation whose default is documented in the file's header, or empty."""
    problems = []
    for path, value in _strings(compose):
        candidates: list[str] = []
        key = path.rsplit(".", 1)[-1]
        # A *_FILE setting names where a secret is kept, not the secret.
        if SECRET_NAME.search(key) and not key.endswith("_FILE") and path.split(".")[-2] == "environment":
            candidates.append(value)
        candidates += [m.group("password") for m in _CREDENTIAL_IN_URL.finditer(value)]
        candidates += [m.group("password") for m in _JSON_PASSWORD.finditer(value)]
        for secret in candidates:
            match = re.fullmatch(r"\$\{[A-Za-z_]\w*:-(?P<default>[^}]*)\}", secret)
            if not match:
                problems.append(f"{path}: a credential that is not ${{VAR:-default}}: {secret!r}")
            elif match.group("default") and match.group("default") not in header:
                problems.append(f"{path}: default {match.group('default')!r} is not documented in the header")
    return problems


def test_no_secret_beyond_the_documented_local_defaults(compose):
    text = COMPOSE.read_text()
    header = documented_defaults(text)
    assert secret_problems(compose, header) == []
    # The check sees the credentials there are (so an empty list means something).
    env = compose["x-airflow-common"]["environment"]
    assert "${POSTGRES_PASSWORD:-atelier-local-pg}" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    broken = copy.deepcopy(compose)
    env = broken["x-airflow-common"]["environment"]
    env["AIRFLOW__API_AUTH__JWT_SECRET"] = "0f3c9a7e1b2d"
    env["ATELIER_LEDGER_DSN"] = "postgresql://atelier:hunter2@postgres:5432/atelier"
    env["AIRFLOW_CONN_ATELIER_S3"] = env["AIRFLOW_CONN_ATELIER_S3"].replace(
        "${MINIO_ROOT_PASSWORD:-atelier-local}", "s3cr3t"
    )
    broken["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = (
        "${GRAFANA_ADMIN_PASSWORD:-undocumented-pw}"
    )
    found = "\n".join(secret_problems(broken, header))
    for needle in ["JWT_SECRET", "ATELIER_LEDGER_DSN", "AIRFLOW_CONN_ATELIER_S3", "undocumented-pw"]:
        assert needle in found


# -- files the stack mounts and the image copies -------------------------------------------------
def mount_sources(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Bind-mount sources (relative to the compose file) by service."""
    out: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                out.setdefault(name, []).append(source)
    return out


def missing_mounts(compose: dict[str, Any], root: Path) -> list[str]:
    return [
        f"{name}: {src}" for name, srcs in mount_sources(compose).items() for src in srcs if not (root / src).exists()
    ]


def test_every_mounted_file_exists(compose, tmp_path):
    sources = mount_sources(compose)
    observability = [s for srcs in sources.values() for s in srcs if s.startswith("./observability/")]
    assert sorted(observability) == [
        "./observability/alertmanager/alertmanager.yml",
        "./observability/grafana/dashboards",
        "./observability/grafana/provisioning",
        "./observability/prometheus/prometheus.yml",
        "./observability/prometheus/rules",
        "./observability/statsd/mapping.yml",
    ]
    assert "./config/buckets.txt" in sources["minio-init"]
    assert missing_mounts(compose, ROOT) == []

    # A checkout without the buckets list is caught (the observability files are the real ones).
    (tmp_path / "observability").symlink_to(ROOT / "observability")
    assert [m for m in missing_mounts(compose, tmp_path) if "./observability/" not in m] == [
        "minio-init: ./config/buckets.txt"
    ]


def test_buckets_created_are_the_ones_atelier_uses():
    from atelier.settings import Settings

    listed = [b.strip() for b in (ROOT / "config" / "buckets.txt").read_text().splitlines() if b.strip()]
    fields = Settings.__dataclass_fields__
    defaults = [fields[f].default_factory() for f in ("inbox_bucket", "renders_bucket", "reports_bucket")]  # type: ignore[misc]
    assert sorted(listed) == sorted(defaults)


def test_minio_init_creates_the_listed_buckets(compose, tmp_path):
    """minio-init's script, run by /bin/sh with `mc` recording its calls: it logs in with the
    compose credentials and makes each bucket of config/buckets.txt (blank lines skipped, a last
    line without a newline kept), idempotently."""
    service = compose["services"]["minio-init"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    assert "./config/buckets.txt:/config/buckets.txt:ro" in service["volumes"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text('#!/bin/sh\necho "$*" >> "$MC_CALLS"\n')
    (bin_dir / "mc").chmod(0o755)

    def calls(buckets_txt: str) -> list[str]:
        listing = tmp_path / "buckets.txt"
        listing.write_text(buckets_txt)
        script = interpolate(service["command"][0]).replace("/config/buckets.txt", str(listing))
        log = tmp_path / "calls.txt"
        log.unlink(missing_ok=True)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_CALLS": str(log)}
        env |= {k: interpolate(str(v)) for k, v in service["environment"].items()}
        out = run(["/bin/sh", "-c", script], env=env)
        assert out.returncode == 0, out.stderr
        return log.read_text().splitlines()

    expected = [f"mb --ignore-existing atelier/{b}" for b in (ROOT / "config/buckets.txt").read_text().split()]
    assert calls((ROOT / "config/buckets.txt").read_text()) == [
        "alias set atelier http://minio:9000 atelier-local atelier-local",
        *expected,
    ]
    assert calls("a\n\nb")[1:] == ["mb --ignore-existing atelier/a", "mb --ignore-existing atelier/b"]


def dockerfile_problems(dockerfile: str, ignore: str, root: Path) -> list[str]:
    """Every COPY source exists and is let through the build context's ignore file (`*` then
    `!path` lines); config/local.env (loopback addresses) is kept out."""
    allowed = [line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")]
    excluded = [line.strip() for line in ignore.splitlines() if line.strip() and not line.startswith(("#", "!"))]
    problems = []
    if excluded[:1] != ["*"]:
        problems.append("the ignore file does not start by excluding everything")
    if "config/local.env" not in excluded:
        problems.append("config/local.env is not kept out of the image")
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.M):
        args = [a for a in line.split() if not a.startswith("--")]
        for source in args[:-1]:
            source = source.rstrip("/")
            if not (root / source).exists():
                problems.append(f"COPY {source}: no such file")
            if not any(source == a or source.startswith(a + "/") for a in allowed):
                problems.append(f"COPY {source}: excluded by docker/Dockerfile.dockerignore")
    return problems


def test_the_image_copies_files_that_exist_and_reach_the_build():
    dockerfile, ignore = DOCKERFILE.read_text(), DOCKERIGNORE.read_text()
    assert re.search(r"^COPY .*config/ ", dockerfile, re.M)
    assert dockerfile_problems(dockerfile, ignore, ROOT) == []

    found = dockerfile_problems(
        dockerfile + "COPY no-such-dir/ /opt/no-such-dir/\n", ignore.replace("config/local.env\n", ""), ROOT
    )
    assert found == [
        "config/local.env is not kept out of the image",
        "COPY no-such-dir: no such file",
        "COPY no-such-dir: excluded by docker/Dockerfile.dockerignore",
    ]


def test_airflow_init_runs_the_local_stacks_setup_steps(compose):
    """airflow-init runs the script the image ships, which creates and migrates the ledger, migrates
    Airflow, imports config/pools.json and checks the connections, as `scripts/stack.sh up` does
    locally, in that order; the api-server runs through its login-writing wrapper."""
    assert compose["services"]["airflow-init"]["command"] == ["bash", "/opt/atelier/bin/airflow-init.sh"]
    assert compose["services"]["airflow-apiserver"]["command"] == ["bash", "/opt/atelier/bin/api-server.sh"]
    copy_line = "COPY --chown=airflow:root docker/airflow-init.sh docker/api-server.sh /opt/atelier/bin/"
    assert copy_line in DOCKERFILE.read_text()
    script = (ROOT / "docker" / "airflow-init.sh").read_text()
    steps = [
        "CREATE DATABASE",
        "atelier db migrate",
        "airflow db migrate",
        'config_path("pools.json")',  # the package's pools.json (or ATELIER_CONFIG_DIR's)
        'airflow pools import "${pools}"',
        "for conn in atelier_ledger atelier_s3",
    ]
    positions = [script.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions, strict=True))
    for conn in ("atelier_ledger", "atelier_s3"):
        assert f"AIRFLOW_CONN_{conn.upper()}" in compose["x-airflow-common"]["environment"]
    for name in ("airflow-init.sh", "api-server.sh"):
        assert run(["bash", "-n", ROOT / "docker" / name]).returncode == 0


# -- the observability profile's configuration meets the services --------------------------------
def observability_problems(
    compose: dict[str, Any], prometheus: dict[str, Any], dashboard_providers: list[Any], datasources: list[Any]
) -> list[str]:
    """Prometheus (observability/prometheus/prometheus.yml) reads its rules where compose mounts
    them and scrapes/alerts services of this file on the ports they listen on; Grafana's dashboard
    provider reads the directory compose mounts the dashboards into, and its data sources are
    services of this file."""
    services = compose["services"]
    problems = []

    def target(service: str, volume_source: str) -> str | None:
        for volume in services.get(service, {}).get("volumes", []):
            source, _, rest = volume.partition(":")
            if source == volume_source:
                return rest.split(":")[0]
        return None

    rules_dir = target("prometheus", "./observability/prometheus/rules")
    for pattern in prometheus.get("rule_files", []):
        if not rules_dir or not pattern.startswith(rules_dir + "/"):
            problems.append(f"prometheus rule_files {pattern} is not under the rules mount {rules_dir}")
    listens = {
        "statsd-exporter": {
            a.split(":")[-1] for a in services["statsd-exporter"]["command"] if a.startswith("--web.listen-address")
        },
        "alertmanager": {"9093"},
        "prometheus": {"9090"},
    }
    # (who connects, host:port); localhost is the connecting service itself.
    targets = (
        [
            ("prometheus", t)
            for job in prometheus.get("scrape_configs", [])
            for sc in job.get("static_configs", [])
            for t in sc.get("targets", [])
        ]
        + [
            ("prometheus", t)
            for am in prometheus.get("alerting", {}).get("alertmanagers", [])
            for sc in am.get("static_configs", [])
            for t in sc.get("targets", [])
        ]
        + [("grafana", urlsplit(d.get("url", "")).netloc) for d in datasources]
    )
    for origin, t in targets:
        host, _, port = t.rpartition(":")
        service = origin if host == "localhost" else host
        if service not in services:
            problems.append(f"{origin} target {t}: no service {service}")
        elif port not in listens.get(service, set()):
            problems.append(f"{origin} target {t}: {service} does not listen on {port}")
    dashboards = target("grafana", "./observability/grafana/dashboards")
    for provider in dashboard_providers:
        path = (provider.get("options") or {}).get("path")
        if path != dashboards:
            problems.append(
                f"grafana dashboard provider {provider.get('name')} reads {path}, compose mounts {dashboards}"
            )
    return problems


def test_the_observability_configuration_meets_the_compose_services(compose):
    prometheus = load_yaml(ROOT / "observability/prometheus/prometheus.yml")
    provisioning = ROOT / "observability/grafana/provisioning/dashboards"
    providers = [p for f in sorted(provisioning.glob("*.y*ml")) for p in (load_yaml(f) or {}).get("providers", [])]
    datasources = [
        d
        for f in sorted((provisioning.parent / "datasources").glob("*.y*ml"))
        for d in (load_yaml(f) or {}).get("datasources", [])
    ]
    assert prometheus.get("rule_files") and prometheus.get("scrape_configs") and providers and datasources
    assert observability_problems(compose, prometheus, providers, datasources) == []

    broken = copy.deepcopy(prometheus)
    broken["rule_files"] = ["/etc/prometheus/alerts/*.yml"]
    broken["scrape_configs"][0]["static_configs"][0]["targets"] = ["statsd-exporter:9125", "statsd:9102"]
    bad_provider = [{"name": "x", "options": {"path": "/dashboards"}}]
    bad_source = [{"url": "http://localhost:9090"}]
    found = "\n".join(observability_problems(compose, broken, bad_provider, bad_source))
    for needle in [
        "/etc/prometheus/alerts/",
        "statsd-exporter:9125",
        "no service statsd",
        "reads /dashboards",
        "grafana target localhost:9090",
    ]:
        assert needle in found
