"""The reference inference service: the studio renderer behind an async job API, with its own
rate limit and fault injection, so every remote failure mode can be exercised locally."""

from __future__ import annotations

import os
from pathlib import Path

ADMIN_TOKEN_ENV = "ATELIER_REFSERVICE_ADMIN_TOKEN"


def admin_token() -> str | None:
    """The token of the service's ``/admin/*`` endpoints: ``ATELIER_REFSERVICE_ADMIN_TOKEN`` from
    the environment, else the one the local stack generated in ``.state/secrets.env``."""
    if token := os.environ.get(ADMIN_TOKEN_ENV):
        return token
    from dotenv import dotenv_values

    from atelier.settings import ROOT

    secrets = Path(os.environ.get("ATELIER_STATE") or ROOT / ".state") / "secrets.env"
    return (dotenv_values(secrets).get(ADMIN_TOKEN_ENV) or None) if secrets.is_file() else None


def admin_headers() -> dict[str, str]:
    """The bearer header every caller of ``/admin/*`` sends (empty when there is no token)."""
    token = admin_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
