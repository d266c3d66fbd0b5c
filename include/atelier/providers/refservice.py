"""Client of the reference inference service (submit → poll → fetch, Idempotency-Key)."""

from __future__ import annotations

import base64
from typing import Any

from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider, field, job_error


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
        created = self.request_json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return str(field(created, "id", self.name))

    def status_path(self, job_id: str) -> str:
        return f"/v1/jobs/{job_id}"

    def parse_status(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = field(body, "status", self.name)
        status = raw if raw in ("succeeded", "failed") else "running"
        return {"status": status, "error": job_error(body.get("error"))}

    def result(self, job_id: str, status: dict[str, Any]) -> bytes:
        return self.request_bytes("GET", f"/v1/jobs/{job_id}/result")
