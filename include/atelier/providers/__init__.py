"""Inference providers. Today: the built-in local studio renderer (deterministic, CPU only)."""

from __future__ import annotations

from typing import Protocol

from atelier.catalog import Brand, OutputSpec


class Provider(Protocol):
    name: str
    model_version: str

    def render(self, source: bytes, specs: list[OutputSpec], brand: Brand) -> dict[str, bytes]:
        """Renders one SKU's packshot into every spec; raises images.BadImage for unusable input."""
        ...


PROVIDERS = ("studio",)


def get_provider(name: str) -> Provider:
    if name == "studio":
        from atelier.providers.studio import StudioRenderer

        return StudioRenderer()
    raise ValueError(f"provider: unknown provider {name!r}; known: {list(PROVIDERS)}")


def model_version(name: str) -> str:
    return get_provider(name).model_version
