"""The reference inference service: the studio renderer behind an async job API, with its own
rate limit and fault injection, so every remote failure mode can be exercised locally."""

from __future__ import annotations

import os

ADMIN_TOKEN_ENV = "ATELIER_REFSERVICE_ADMIN_TOKEN"


def admin_headers() -> dict[str, str]:
    """The bearer header every caller of the service's ``/admin/*`` endpoints sends (token from
    ``ATELIER_REFSERVICE_ADMIN_TOKEN``; the local stack generates it in ``.state/secrets.env``)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}
