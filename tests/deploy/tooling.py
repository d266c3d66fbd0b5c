"""The deployment checks' tools. checkov, check-jsonschema and PyYAML live in ``.venv-tools`` and
python-hcl2 in ``.venv-hcl2`` (``make tools``): their pins conflict with Airflow's, so they are run
as programs, and documents come back as JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-tools" / "bin"
HCL2 = ROOT / ".venv-hcl2" / "bin"

_YAML_TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
# python-hcl2 keeps string literals' quotes (`"x"`) and interpolations (`${...}`) as written.
_HCL_TO_JSON = (
    "import json, sys, hcl2\n"
    "out = {}\n"
    "for path in sys.argv[1:]:\n"
    "    with open(path) as f:\n"
    "        out[path] = hcl2.load(f)\n"
    "json.dump(out, sys.stdout)\n"
)


def tool(name: str, venv: Path = TOOLS) -> Path:
    """The path of a tool from a tool virtualenv; fails (not skips) when it is missing: `make test`
    builds them, and a check that silently does not run proves nothing."""
    path = venv / name
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: run `make tools`")
    return path


def run(
    args: list[Any], cwd: Path = ROOT, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a program; ``env`` is added to this process's environment."""
    full = {**os.environ, **env} if env else None
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full)


def load_yaml(path: Path) -> Any:
    """A YAML document (anchors and `<<` merge keys resolved) as plain data."""
    out = run([tool("python"), "-c", _YAML_TO_JSON, path])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def load_hcl(paths: list[Path]) -> dict[Path, dict[str, Any]]:
    """Terraform files parsed by python-hcl2, by path."""
    out = run([tool("python", HCL2), "-c", _HCL_TO_JSON, *paths])
    assert out.returncode == 0, out.stderr
    return {Path(p): doc for p, doc in json.loads(out.stdout).items()}
