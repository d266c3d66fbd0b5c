"""Running a drop's steps without Airflow, for tests: sample catalogs in S3, trigger params, and
the steps in order (what the DAG does, against the real ledger and S3 endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.campaign import DropRequest, finalize, plan, quality_check, register, validate_drop
from atelier.rendering import render_shard
from atelier.resources import Resources
from atelier.samples import make_catalog
from atelier.settings import settings
from atelier.storage import Storage, split_s3


def upload(storage: Storage, folder: Path, base: str, corrupt: str | None = None) -> str:
    bucket, prefix = split_s3(base + "/x")
    prefix = prefix[:-1]
    for img in (folder / "images").iterdir():
        body = b"\xff\xd8\xff\xe0 truncated jpeg" if img.stem == corrupt else img.read_bytes()
        storage.client.put_object(Bucket=bucket, Key=f"{prefix}images/{img.name}", Body=body)
    storage.client.put_object(Bucket=bucket, Key=f"{prefix}manifest.csv", Body=(folder / "manifest.csv").read_bytes())
    return f"s3://{bucket}/{prefix}manifest.csv"


def params(manifest_uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "brand": "atelier-test",
        "manifest_uri": manifest_uri,
        "output_specs": ["thumb_320", "bench_small_128"],
        "provider": "studio",
        "drop_id": "",
        "shard_size": 0,
        "priority": "normal",
        "dry_run": False,
        **extra,
    }


def run_drop(res: Resources, req: DropRequest, run_id: str) -> dict[str, Any]:
    validated = validate_drop(res, req)
    cid = register(res, req, validated, run_id)["campaign_id"]
    for shard in plan(res, cid, req.shard_size):
        render_shard(res, cid, shard["shard"], f"{run_id}/{shard['shard']}")
    return finalize(res, cid, quality_check(res, cid))


def sample_drop(res: Resources, tmp_path: Path, uid: str, skus: int, seed: int = 0) -> str:
    base = f"s3://{settings().inbox_bucket}/tests/{uid}"
    make_catalog(skus, tmp_path, base + "/images", seed=int(uid[:6], 16) + seed)
    return upload(res.storage, tmp_path, base)


def planned(res: Resources, req: DropRequest, run_id: str) -> tuple[str, list[dict[str, Any]]]:
    cid = register(res, req, validate_drop(res, req), run_id)["campaign_id"]
    return cid, plan(res, cid, req.shard_size)
