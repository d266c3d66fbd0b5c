"""Client of the reference inference service (submit → poll → fetch, Idempotency-Key).

A render is one request when the job finishes within ``long_poll_s`` and its result is at most
``inline_max_bytes``: the submit carries ``Prefer: wait=N, inline-result=B`` and its answer is the
finished job with the image. Otherwise status GETs long-poll (or are paced by the job's ``eta_s``)
and a large result is fetched from ``result.url``. An inline image is checked against the
document's ``bytes`` and ``sha256``; a mismatch fetches it from the URL instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider, field, job_error
from atelier.resilience import PermanentError

REKEYS = 3  # how many times a render whose finished job the service dropped may be asked again


class RefServiceProvider(HttpProvider):
    def submit(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> str:
        """Submits the job without waiting for it (deferred shards): its id."""
        return str(self._post(source, spec, brand, key, wait=0.0)["id"])

    def start(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> dict[str, Any]:
        """Submits the job, the answer held until it finishes (up to ``long_poll_s``)."""
        return self._post(source, spec, brand, key, wait=self.long_poll_s)

    def _post(self, source: bytes, spec: OutputSpec, brand: Brand, key: str, wait: float) -> dict[str, Any]:
        body = {
            "image_b64": base64.b64encode(source).decode(),
            "spec": {"name": spec.name, "width": spec.width, "height": spec.height, "format": spec.format},
            "brand": {
                "slug": brand.slug,
                "backdrop_top": brand.backdrop_top,
                "backdrop_bottom": brand.backdrop_bottom,
                "shadow_strength": brand.shadow_strength,
            },
        }
        # The service answers 410 for a key whose job finished so long ago that it dropped the
        # result (our copy was lost since, e.g. S3 lost the object): ask again under a key derived
        # deterministically from ours, so retries of this render still share one job.
        options = self.held(wait, inline=wait > 0)
        prefer = options.pop("headers")
        for attempt in range(REKEYS + 1):
            try:
                created, headers = self.request_json_headers(
                    "POST", "/v1/jobs", json=body, headers={**prefer, "Idempotency-Key": key}, **options
                )
                job_id = str(field(created, "id", self.name))
                # An answer without a status (an older service) is a job still running.
                status = self.parse_with_pacing({"status": "running", **created}, headers)
                return {**status, "id": job_id}
            except PermanentError as exc:
                if exc.status != 410 or attempt == REKEYS:
                    raise
                key = f"{key}.again"
        raise AssertionError("unreachable")

    def status_path(self, job_id: str) -> str:
        return f"/v1/jobs/{job_id}"

    def parse_status(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = field(body, "status", self.name)
        status = raw if raw in ("succeeded", "failed") else "running"
        parsed: dict[str, Any] = {"status": status, "error": job_error(body.get("error"))}
        if status == "succeeded" and (inline := self._inline(body.get("result"))) is not None:
            parsed["inline"] = inline
        return parsed

    def _inline(self, result: Any) -> bytes | None:
        """The inlined image of a ``result`` object when it is whole (its ``bytes`` and ``sha256``
        match), else None: the caller fetches it from the result URL."""
        if not isinstance(result, dict) or not isinstance(result.get("b64"), str):
            return None
        try:
            data = base64.b64decode(result["b64"], validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(data) != result.get("bytes") or hashlib.sha256(data).hexdigest() != result.get("sha256"):
            return None
        return data

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        if isinstance(inline := status.get("inline"), bytes):
            return inline
        return self.request_bytes("GET", f"/v1/jobs/{job_id}/result")
