"""The requirement files match the code: every third-party module imported in dags/, plugins/,
include/ and tests/ belongs to a declared distribution; what the DAGs' task code reaches is
declared in the runtime file (the only one a worker image installs); both locks pin every
declared name, at one version where they overlap, and the runtime lock carries no test tooling."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "include"
FIRST_PARTY = {"atelier", "tests"}
RUNTIME_IN, DEV_IN = ROOT / "requirements.in", ROOT / "requirements-dev.in"
RUNTIME_LOCK, DEV_LOCK = ROOT / "requirements.txt", ROOT / "requirements-dev.txt"
# apache-airflow is the documented way to install Airflow; it brings these parts of itself.
PART_OF = {"apache-airflow-core": "apache-airflow", "apache-airflow-task-sdk": "apache-airflow"}
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "moto", "ruff", "supervisor", "apache-airflow-client"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- what the code imports -----------------------------------------------------------------------
class Imports(ast.NodeVisitor):
    """Absolute imports of a module, wherever they sit (lazy imports in functions count: tasks run
    them), except under ``if TYPE_CHECKING:``. ``modules`` are certainly modules; ``members`` are
    ``pkg.name`` for ``from pkg import name``, a module only when ``name`` is one."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.members: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.modules.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.modules.add(node.module)
            self.members.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")


@cache
def parsed(path: Path) -> Imports:
    visitor = Imports()
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor


def imports_of(path: Path) -> set[str]:
    return parsed(path).modules | parsed(path).members


def sources(*dirs: str) -> Iterator[Path]:
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def first_party_file(module: str) -> Path | None:
    """The file of an ``atelier.*`` module (package or module), if it is one."""
    base = PACKAGE_DIR.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_closure() -> tuple[set[Path], list[str]]:
    """The DAG files, plugins, and every atelier module they reach through imports (with the
    packages above each): the code a scheduler, worker or triggerer runs. Also the first-party
    imports that name no module in include/ (each one would hide part of the closure)."""
    todo = [*sources("dags", "plugins")]
    seen: set[Path] = set()
    unresolved: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        imports = parsed(path)
        for name in sorted(imports.modules | imports.members):
            parts = name.split(".")
            if parts[0] != "atelier":
                continue
            if name in imports.modules and first_party_file(name) is None:
                unresolved.append(f"{path.relative_to(ROOT)}: {name}")
            for i in range(1, len(parts) + 1):
                found = first_party_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen, unresolved


def runtime_files() -> set[Path]:
    return runtime_closure()[0]


def third_party(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] not in FIRST_PARTY}


# -- which distribution provides a module --------------------------------------------------------
@cache
def module_owners() -> dict[str, set[str]]:
    """Dotted module name -> distributions whose RECORD installs it (so ``airflow.providers.amazon``
    maps to the amazon provider, not to every distribution sharing the ``airflow`` namespace)."""
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                continue
            stem = parts[-1].split(".", 1)[0]
            if not parts[-1].endswith((".py", ".so", ".pyd")) or not stem.isidentifier():
                continue
            dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            if dotted and all(p.isidentifier() for p in dotted):
                owners.setdefault(".".join(dotted), set()).add(name)
    return owners


def distributions_of(module: str) -> set[str]:
    """The distributions providing ``module``: the longest of its dotted prefixes that one installs.
    ``from pkg import attr`` names ``pkg.attr``, which resolves to ``pkg``'s owner."""
    owners = module_owners()
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:i]))
        if found:
            return {PART_OF.get(d, d) for d in found}
    top = importlib.metadata.packages_distributions().get(parts[0], [])
    return {PART_OF.get(canonical(d), canonical(d)) for d in top}


# -- what the requirement files say --------------------------------------------------------------
def declared(path: Path) -> set[str]:
    """Distribution names of a requirements .in file (options such as ``-c`` and comments skipped)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            assert match, f"{path.name}: cannot read {line!r}"
            names.add(canonical(match.group()))
    return names


def pinned(path: Path) -> dict[str, str]:
    """Name -> version of a lock file written by ``uv pip compile``."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(3)
    return pins


def undeclared(files: Iterable[Path], allowed: set[str]) -> list[str]:
    problems = []
    for path in files:
        for module in sorted(third_party(imports_of(path))):
            dists = distributions_of(module)
            if not dists:
                problems.append(f"{path.relative_to(ROOT)}: {module} is not installed by any distribution")
            elif not dists & allowed:
                problems.append(f"{path.relative_to(ROOT)}: {module} comes from {sorted(dists)}, not declared")
    return problems


# -- the checks ----------------------------------------------------------------------------------
def test_the_code_that_workers_run_needs_only_runtime_requirements():
    files, unresolved = runtime_closure()
    assert unresolved == []
    reached = third_party(name for path in files for name in imports_of(path))
    assert {"airflow.sdk", "great_expectations", "jinja2"} <= reached  # DAGs, tasks, the QA and report steps
    assert undeclared(sorted(files), declared(RUNTIME_IN)) == []


def test_every_import_is_declared():
    allowed = declared(RUNTIME_IN) | declared(DEV_IN)
    assert undeclared(sources("dags", "plugins", "include", "tests"), allowed) == []


def test_locks_pin_every_declared_name_at_one_version():
    runtime, dev = pinned(RUNTIME_LOCK), pinned(DEV_LOCK)
    assert sorted(declared(RUNTIME_IN) - runtime.keys()) == [], "run `make lock`"
    assert sorted(declared(DEV_IN) - dev.keys()) == [], "run `make lock`"
    assert {n: (v, dev[n]) for n, v in runtime.items() if n in dev and dev[n] != v} == {}


def test_the_runtime_lock_has_no_test_tooling():
    assert sorted(TEST_TOOLS & pinned(RUNTIME_LOCK).keys()) == []
    assert sorted(TEST_TOOLS & declared(RUNTIME_IN)) == []


def test_the_checker_sees_what_it_must():
    """The helpers above resolve real cases (so an empty problem list means something)."""
    assert distributions_of("airflow.providers.amazon.aws.hooks.s3") == {"apache-airflow-providers-amazon"}
    assert distributions_of("airflow.sdk.BaseOperator") == {"apache-airflow"}
    assert distributions_of("PIL.Image") == {"pillow"}
    assert distributions_of("dotenv") == {"python-dotenv"}
    assert third_party({"json", "atelier.campaign", "tests.helpers", "httpx"}) == {"httpx"}
    assert undeclared([ROOT / "include/atelier/report.py"], {"pillow"}) == [
        "include/atelier/report.py: jinja2 comes from ['jinja2'], not declared"
    ]
    refservice_app = ROOT / "include/atelier/refservice/app.py"
    assert refservice_app.is_file() and refservice_app not in runtime_files()
