"""Adapter for a third-party *predictions* API (the shape Replicate documents):

  POST /v1/predictions {"version": ..., "input": {...}}  → 201 {"id", "status": "starting", ...}
  GET  /v1/predictions/{id} → {"status": starting|processing|succeeded|failed|canceled,
                               "output": [url] | url | null, "error": str | null}
  GET  <output url>         → the image bytes

The API does not take idempotency keys, so a retried *create* can start a second prediction; we
only retry a create after a connection error or 429/5xx and accept that rare duplicate charge
(recorded in the closing note). The token comes from the environment (``token_env``).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider
from atelier.resilience import PermanentError


class PredictionsProvider(HttpProvider):
    def auth_headers(self) -> dict[str, str]:
        token = os.environ.get(str(self.cfg.get("token_env", "")), "")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def submit(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> str:
        body = {
            "version": self.model_version,
            "input": {
                "image": "data:application/octet-stream;base64," + base64.b64encode(source).decode(),
                "width": spec.width,
                "height": spec.height,
                "output_format": spec.format.lower(),
                "backdrop_top": brand.backdrop_top,
                "backdrop_bottom": brand.backdrop_bottom,
            },
        }
        return str(self.request("POST", "/v1/predictions", json=body).json()["id"])

    def status_path(self, job_id: str) -> str:
        return f"/v1/predictions/{job_id}"

    def parse_status(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("status")
        status = "succeeded" if raw == "succeeded" else "failed" if raw in ("failed", "canceled") else "running"
        error = body.get("error") if raw != "canceled" else "canceled"
        return {"status": status, "error": f"{raw}: {error}", "output": body.get("output")}

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        output = status.get("output")
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise PermanentError(f"{self.name}: prediction {job_id} has no output URL ({output!r})")
        return self.request("GET", url).content
