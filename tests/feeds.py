"""A brand's catalog feed for refresh tests: snapshots (CSV, the manifest schema) built from
sample packshots, edited between nights as a brand's export would change."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from atelier.samples import make_catalog
from atelier.storage import Storage, split_s3


class Feed:
    """Images under ``<home>images/``, snapshots under ``feed`` (both inside the brand's inbox)."""

    def __init__(self, storage: Storage, home: str, feed: str, tmp: Path, seed: int):
        self.storage, self.home, self.feed, self.tmp, self.seed = storage, home, feed, tmp, seed
        self.rows: dict[str, dict[str, str]] = {}
        self.snapshots = 0

    def add_skus(self, n: int) -> list[str]:
        """n new SKUs with their packshots uploaded; returns their ids."""
        self.seed += 1
        folder = self.tmp / f"batch{self.seed}"
        make_catalog(n, folder, self.home + "images", seed=self.seed)
        bucket, prefix = split_s3(self.home + "x")
        prefix = prefix[:-1]
        added = []
        with (folder / "manifest.csv").open() as fh:
            for row in csv.DictReader(fh):
                img = folder / "images" / Path(row["image_uri"]).name
                self.storage.client.put_object(Bucket=bucket, Key=f"{prefix}images/{img.name}", Body=img.read_bytes())
                self.rows[row["sku"]] = row
                added.append(row["sku"])
        return added

    def change_image(self, sku: str) -> None:
        """Replaces ``sku``'s packshot (same URI) with a packshot never seen before: new content."""
        self.seed += 1
        folder = self.tmp / f"new{self.seed}"
        make_catalog(1, folder, "s3://unused/images", seed=self.seed + 10_000)
        body = next((folder / "images").iterdir()).read_bytes()
        bucket, key = split_s3(self.rows[sku]["image_uri"])
        self.storage.client.put_object(Bucket=bucket, Key=key, Body=body)

    def corrupt_image(self, sku: str) -> None:
        """Replaces ``sku``'s packshot with bytes that are not an image (a render of it fails)."""
        bucket, key = split_s3(self.rows[sku]["image_uri"])
        self.storage.client.put_object(Bucket=bucket, Key=key, Body=b"\xff\xd8\xff\xe0 truncated jpeg")

    def publish(self, bad_row: dict[str, str] | None = None) -> str:
        """Writes the catalog as a new snapshot; returns its URI. Snapshots are named and dated in
        order (S3's LastModified has 1 s resolution: the next one waits until it is newer)."""
        self.snapshots += 1
        out = io.StringIO()
        cols = ["sku", "title", "category", "image_uri", "colour", "season", "price_eur"]
        w = csv.DictWriter(out, fieldnames=cols)
        w.writeheader()
        for row in [*self.rows.values(), *([bad_row] if bad_row else [])]:
            w.writerow({k: row.get(k, "") for k in cols})
        bucket, prefix = split_s3(self.feed + "x")
        key = f"{prefix[:-1]}export-{self.snapshots:04d}.csv"
        time.sleep(1.05)  # a strictly newer LastModified than the previous snapshot
        self.storage.client.put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
        return f"s3://{bucket}/{key}"
