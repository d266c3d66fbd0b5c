"""Brands, output specs and the identifiers of a drop: what is allowed and how it is named."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atelier.settings import load_config, settings

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
DEFAULT_SPECS = ("pdp_square_1024", "thumb_320")  # a drop's specs unless it names others
PRIORITIES = ("low", "normal", "high")  # a campaign's priority; also the ledger's CHECK constraint
DROP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # output format → file extension
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    width: int
    height: int
    format: str

    @property
    def extension(self) -> str:
        return FORMATS[self.format]

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def canonical(self) -> str:
        return json.dumps({"w": self.width, "h": self.height, "f": self.format}, sort_keys=True)


@dataclass(frozen=True)
class Brand:
    slug: str
    success_threshold: float
    backdrop_top: str
    backdrop_bottom: str
    shadow_strength: float
    allowed_image_hosts: tuple[str, ...]
    # s3 inputs (images and manifest) only under these "s3://bucket/prefix/" entries: see brand()
    inbox: tuple[str, ...] = ()
    refresh: Refresh | None = None  # the nightly catalog refresh; None: the brand is not refreshed
    subscribers: tuple[Subscriber, ...] = ()  # who is told when a campaign of the brand ends
    approval: Approval | None = None  # a person approves each campaign before it is complete


@dataclass(frozen=True)
class Approval:
    """``"approval": "required"`` in brands.json: after the quality gate a reviewer approves the
    campaign or rejects it with a reason. Nobody answering within ``timeout_minutes`` decides
    ``on_timeout`` (``reject`` by default, with the reason "approval timed out")."""

    timeout_minutes: int = 24 * 60
    on_timeout: str = "reject"


@dataclass(frozen=True)
class Refresh:
    """A brand's nightly catalog refresh: at ``at`` (HH:MM) local time in ``timezone``, the newest
    snapshot under ``feed`` (an ``s3://bucket/prefix/`` inside the brand's inbox) is diffed against
    the last one processed."""

    timezone: str
    at: str
    feed: str

    @property
    def hour(self) -> int:
        return int(self.at[:2])

    @property
    def minute(self) -> int:
        return int(self.at[3:])


@dataclass(frozen=True)
class Subscriber:
    """An HTTPS endpoint told about each finished campaign of the brand. The signing secret is the
    password of the Airflow connection ``conn_id`` (never in this file)."""

    url: str
    conn_id: str


class ConfigError(ValueError):
    """A trigger's configuration (brand, specs, drop id, ...) is not acceptable."""


REFRESH_AT = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


def _refresh(slug: str, merged: dict[str, Any], inbox: list[tuple[str, str]]) -> Refresh | None:
    """The brand's refresh settings: ``timezone``, ``refresh_at`` and ``catalog_feed`` all set, or none."""
    from atelier.manifest import parse_inbox

    keys = ("timezone", "refresh_at", "catalog_feed")
    given = {k: merged.get(k) for k in keys if merged.get(k) is not None}
    if not given:
        return None
    if len(given) != len(keys):
        missing = [k for k in keys if k not in given]
        raise ConfigError(f"brands.json: {slug}: a nightly refresh needs {', '.join(keys)}; missing {missing}")
    tz, at, feed = (given[k] for k in keys)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigError(f"brands.json: {slug}: timezone {tz!r} is not an IANA time zone") from exc
    if not isinstance(at, str) or not REFRESH_AT.match(at):
        raise ConfigError(f"brands.json: {slug}: refresh_at {at!r} must be HH:MM (24 h, local time)")
    if not isinstance(feed, str):
        raise ConfigError(f"brands.json: {slug}: catalog_feed {feed!r} must be an s3:// prefix")
    feed = feed.replace("{brand}", slug).replace("{inbox_bucket}", settings().inbox_bucket)
    try:
        bucket, prefix = parse_inbox(feed)
    except ValueError as exc:
        raise ConfigError(f"brands.json: {slug}: catalog_feed {feed!r} {exc}") from exc
    if not any(bucket == b and prefix.startswith(p) for b, p in inbox):
        raise ConfigError(f"brands.json: {slug}: catalog_feed {feed!r} is outside the brand's inbox")
    return Refresh(timezone=tz, at=at, feed=f"s3://{bucket}/{prefix}")


def _subscribers(slug: str, merged: dict[str, Any]) -> tuple[Subscriber, ...]:
    entries = merged.get("subscribers", [])
    if not isinstance(entries, list):
        raise ConfigError(f"brands.json: {slug}: subscribers must be a list, got {entries!r}")
    subs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"url", "conn_id"}:
            raise ConfigError(f"brands.json: {slug}: subscribers[{i}] must be {{url, conn_id}}, got {e!r}")
        url, conn_id = e["url"], e["conn_id"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2048:
            raise ConfigError(f"brands.json: {slug}: subscribers[{i}].url {url!r} must be an http(s) URL")
        if not isinstance(conn_id, str) or not CONN_ID.match(conn_id):
            raise ConfigError(f"brands.json: {slug}: subscribers[{i}].conn_id {conn_id!r} is not a connection id")
        subs.append(Subscriber(url=url, conn_id=conn_id))
    return tuple(subs)


def _approval(slug: str, merged: dict[str, Any]) -> Approval | None:
    mode = merged.get("approval", "none")
    if mode not in ("required", "none"):
        raise ConfigError(f"brands.json: {slug}: approval {mode!r} must be 'required' or 'none'")
    timeout = merged.get("approval_timeout_minutes", Approval.timeout_minutes)
    on_timeout = merged.get("approval_on_timeout", Approval.on_timeout)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 30 * 24 * 60:
        raise ConfigError(f"brands.json: {slug}: approval_timeout_minutes {timeout!r} must be 1..43200")
    if on_timeout not in ("reject", "approve"):
        raise ConfigError(f"brands.json: {slug}: approval_on_timeout {on_timeout!r} must be 'reject' or 'approve'")
    return Approval(timeout_minutes=timeout, on_timeout=on_timeout) if mode == "required" else None


def refreshed_brands() -> list[str]:
    """The brands with a nightly refresh configured (the refresh DAG file makes one DAG each)."""
    brands: dict[str, Any] = load_config("brands.json")
    return sorted(
        slug
        for slug, cfg in brands.items()
        if not slug.startswith("_") and any(cfg.get(k) is not None for k in ("timezone", "refresh_at", "catalog_feed"))
    )


def all_specs() -> dict[str, OutputSpec]:
    return {
        name: OutputSpec(name, v["width"], v["height"], v["format"]) for name, v in load_config("specs.json").items()
    }


def resolve_specs(names: list[str]) -> list[OutputSpec]:
    known = all_specs()
    if not isinstance(names, list) or not names:
        raise ConfigError(f"output_specs: expected a non-empty list of spec names, got {names!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"output_specs: unknown spec(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in sorted(set(names))]


def _brand_inbox(slug: str, merged: dict[str, Any]) -> list[tuple[str, str]]:
    """(bucket, prefix) pairs of a brand's inbox. ``{brand}`` and ``{inbox_bucket}`` in an entry
    stand for the slug and the configured inbox bucket; the renders and reports buckets are refused."""
    from atelier.manifest import output_buckets, parse_inbox

    entries = merged.get("inbox", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"brands.json: {slug}: inbox must be a list of s3:// prefixes, got {entries!r}")
    pairs = []
    for entry in entries:
        uri = entry.replace("{brand}", slug).replace("{inbox_bucket}", settings().inbox_bucket)
        try:
            bucket, prefix = parse_inbox(uri)
        except ValueError as exc:
            raise ConfigError(f"brands.json: {slug}: inbox entry {uri!r} {exc}") from exc
        if bucket in output_buckets():
            raise ConfigError(f"brands.json: {slug}: inbox entry {uri!r} is an output bucket, never an input")
        pairs.append((bucket, prefix))
    return pairs


def brand(slug: str) -> Brand:
    """A brand's settings: its own entry in brands.json over ``_default``. Refused when its inbox
    overlaps another configured brand's (e.g. a brand named after a prefix someone else owns)."""
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise ConfigError(f"brand: {slug!r} is not a brand slug (lowercase letters, digits, '-', 2-40 chars)")
    brands: dict[str, Any] = load_config("brands.json")
    merged = {**brands["_default"], **brands.get(slug, {})}
    inbox = _brand_inbox(slug, merged)
    for other, cfg in brands.items():
        if other.startswith("_") or other == slug:
            continue
        try:
            theirs = _brand_inbox(other, {**brands["_default"], **cfg})
        except ConfigError:
            continue  # refused when that brand is used
        for bucket, prefix in inbox:
            for their_bucket, their_prefix in theirs:
                if bucket == their_bucket and (prefix.startswith(their_prefix) or their_prefix.startswith(prefix)):
                    raise ConfigError(
                        f"brand: {slug}'s inbox s3://{bucket}/{prefix} overlaps brand {other}'s "
                        f"s3://{their_bucket}/{their_prefix}"
                    )
    return Brand(
        slug=slug,
        success_threshold=float(merged["success_threshold"]),
        backdrop_top=merged["backdrop_top"],
        backdrop_bottom=merged["backdrop_bottom"],
        shadow_strength=float(merged["shadow_strength"]),
        allowed_image_hosts=tuple(merged["allowed_image_hosts"]),
        inbox=tuple(f"s3://{bucket}/{prefix}" for bucket, prefix in inbox),
        refresh=_refresh(slug, merged, inbox),
        subscribers=_subscribers(slug, merged),
        approval=_approval(slug, merged),
    )


def check_drop_id(drop_id: str) -> str:
    if not isinstance(drop_id, str) or not DROP_ID.match(drop_id):
        raise ConfigError(f"drop_id: {drop_id!r} must be 1-64 of letters, digits, '.', '_', '-'")
    return drop_id


def default_drop_id(manifest_sha256: str) -> str:
    """A drop triggered without an id is named by its manifest's content."""
    return f"m{manifest_sha256[:15]}"


def campaign_id(brand_slug: str, drop_id: str, manifest_sha256: str, specs: list[OutputSpec], provider: str) -> str:
    """The campaign key: the same brand, drop, manifest bytes, specs and provider are one campaign."""
    material = json.dumps(
        [brand_slug, drop_id, manifest_sha256, sorted(s.canonical() for s in specs), provider], sort_keys=True
    )
    digest = hashlib.sha256(material.encode()).hexdigest()
    return f"{brand_slug}.{drop_id}.{digest[:12]}"


def run_id_for(campaign: str) -> str:
    """The Airflow run id of a campaign, so a repeated trigger finds the existing run."""
    return f"drop__{campaign}"


@dataclass(frozen=True)
class Producer:
    """Everything besides the input bytes and the output spec that decides a render's bytes: the
    provider service that made it, the model version it ran and the brand's render settings."""

    service: str
    model_version: str
    style: tuple[tuple[str, str], ...]  # the brand's render settings, sorted (name, value) pairs

    def canonical(self) -> str:
        return json.dumps({"service": self.service, "model": self.model_version, "style": self.style})


def render_style(b: Brand) -> tuple[tuple[str, str], ...]:
    """The brand settings a renderer receives; a change to any of them is a different render."""
    return (
        ("backdrop_bottom", b.backdrop_bottom),
        ("backdrop_top", b.backdrop_top),
        ("shadow_strength", repr(float(b.shadow_strength))),
    )


def render_key(input_fingerprint: str, spec: OutputSpec, producer: Producer) -> str:
    """One render = input image bytes × output spec × what produced it (service, model version,
    brand render settings), whichever campaign asks. Also the provider's Idempotency-Key."""
    material = f"{input_fingerprint}|{spec.canonical()}|{producer.canonical()}"
    return hashlib.sha256(material.encode()).hexdigest()
