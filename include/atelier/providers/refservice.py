"""Client of the reference inference service (submit → poll → fetch, Idempotency-Key)."""

from __future__ import annotations

import base64
from typing import Any

from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider, field, job_error
from atelier.resilience import PermanentError

REKEYS = 3  # how many times a render whose finished job the service dropped may be asked again


class RefServiceProvider(HttpProvider):
    def submit(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> str:
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
        for attempt in range(REKEYS + 1):
            try:
                created = self.request_json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
                return str(field(created, "id", self.name))
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
        return {"status": status, "error": job_error(body.get("error"))}

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        return self.request_bytes("GET", f"/v1/jobs/{job_id}/result")
