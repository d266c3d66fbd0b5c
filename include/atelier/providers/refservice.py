"""Client of the reference inference service (submit → poll → fetch, Idempotency-Key)."""

from __future__ import annotations

import base64

from atelier.catalog import Brand, OutputSpec
from atelier.providers.http import HttpProvider
from atelier.resilience import PermanentError


class RefServiceProvider(HttpProvider):
    def render(self, source: bytes, spec: OutputSpec, brand: Brand, key: str) -> bytes:
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
        with self.slot():
            job = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()
            status = self.wait_for(
                lambda: self.request("GET", f"/v1/jobs/{job['id']}").json(),
                lambda s: s["status"] in ("succeeded", "failed"),
            )
            if status["status"] == "failed":
                raise PermanentError(f"{self.name}: job {job['id']} failed: {status.get('error')}")
            return self.request("GET", f"/v1/jobs/{job['id']}/result").content
