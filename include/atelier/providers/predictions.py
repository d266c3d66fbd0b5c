"""Adapter for a third-party *predictions* API (the shape Replicate documents):

  POST /v1/predictions {"version": ..., "input": {...}}  → 201 {"id", "status": "starting", ...}
  GET  /v1/predictions/{id} → {"status": starting|processing|succeeded|failed|canceled,
                               "output": [url] | url | null, "error": str | null}
  GET  <output url>         → the image bytes

The API does not take idempotency keys, so a retried *create* can start a second prediction; we
only retry a create after a connection error or 429/5xx and accept that rare duplicate charge
(recorded in the closing note). The token comes from the environment (``token_env``).

Output URLs are whatever the API answers, so they are untrusted: they are fetched with a second,
credential-free client (the token must never reach the output host), https only and through the
public-address guard (``atelier.netguard``), with the same deadline and byte cap. Tests that serve
outputs from 127.0.0.1 over http opt in per provider config: ``outputs_allow_http: true`` and
``outputs_allow_networks: ["127.0.0.0/8"]``; production configs set neither.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from atelier import netguard
from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider, field, job_error
from atelier.resilience import PermanentError, TransientError, call_with_retries


class PredictionsProvider(HttpProvider):
    def __init__(self, name: str, cfg: dict[str, Any]):
        super().__init__(name, cfg)
        self.output_policy = netguard.Policy.from_config(
            bool(cfg.get("outputs_allow_http", False)), cfg.get("outputs_allow_networks", ())
        )
        # A second client, not self.http: that one carries the API token and trusts its host;
        # this one has no credentials and lets the guard vet every output host it connects to.
        self.outputs = netguard.client(self.output_policy, self.timeout)

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
        return str(field(self.request_json("POST", "/v1/predictions", json=body), "id", self.name))

    def status_path(self, job_id: str) -> str:
        return f"/v1/predictions/{job_id}"

    def parse_status(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = field(body, "status", self.name)
        status = "succeeded" if raw == "succeeded" else "failed" if raw in ("failed", "canceled") else "running"
        error = body.get("error") if raw != "canceled" else "canceled"
        return {"status": status, "error": job_error(f"{raw}: {error}"), "output": body.get("output")}

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        output = status.get("output")
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise PermanentError(f"{self.name}: prediction {job_id} has no output URL")
        return call_with_retries(lambda: self._fetch_output(job_id, url), self.budget, self.attempts)

    def _fetch_output(self, job_id: str, url: str) -> bytes:
        """One guarded GET of an output URL. Not through the API's breaker or rate limit: the
        output host is usually a CDN, and its health says nothing about the API's."""
        try:
            return netguard.fetch(
                url,
                self.max_response_bytes,
                policy=self.output_policy,
                http=self.outputs,
                total_timeout_s=self.total_timeout,
            )
        except netguard.Refused as exc:
            raise PermanentError(f"{self.name}: prediction {job_id}: output URL refused: {exc}") from None
        except netguard.FetchError as exc:
            message = f"{self.name}: prediction {job_id}: output {exc}"
            raise (TransientError(message) if exc.transient else PermanentError(message)) from None
