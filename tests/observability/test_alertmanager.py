"""Alertmanager's configuration: amtool check-config, and page/ticket routing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.observability.common import OBS, tool

CONFIG = OBS / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("amtool"), *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config() -> None:
    out = amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_amtool_check_config_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: page", "receiver: pager-that-does-not-exist", 1))
    assert amtool("check-config", str(broken)).returncode != 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=ProviderBreakerOpen", "provider=refservice"], "page"),
        (["severity=ticket", "alertname=ProviderRateLimited"], "ticket"),
        (["alertname=SomethingUnlabelled"], "ticket"),
    ],
)
def test_routing(labels: list[str], receiver: str) -> None:
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver
