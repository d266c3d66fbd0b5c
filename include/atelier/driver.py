"""The drop driver: what the CLI, the chaos harness, the bench and the end-to-end tests share to
run drops from outside Airflow — sample catalogs into S3, a checked trigger request, watching a run
with ledger progress, and copying a campaign's outputs locally."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from atelier.settings import settings


def open_ledger() -> Any:
    from atelier import ledger

    return ledger.connect(settings().ledger_dsn)


def open_storage() -> Any:
    from atelier.storage import local_storage

    return local_storage()


def upload_catalog(out: Path, base_uri: str) -> str:
    """Uploads a sample catalog's images and manifest under ``base_uri``; returns the manifest URI."""
    from atelier.storage import split_s3

    bucket, prefix = split_s3(base_uri.rstrip("/") + "/x")
    prefix = prefix[:-1]
    files: list[tuple[str, bytes | str]] = [(f"{prefix}images/{p.name}", str(p)) for p in (out / "images").iterdir()]
    files.append((f"{prefix}manifest.csv", str(out / "manifest.csv")))
    open_storage().upload_tree(files, bucket)
    return f"s3://{bucket}/{prefix}manifest.csv"


def make_samples(skus: int, out: Path, seed: int, base_uri: str, upload: bool, quiet: bool = False) -> str | None:
    from atelier.samples import make_catalog

    def progress(done: int) -> None:
        if not quiet and (done % 100 == 0 or done == skus):
            print(f"\r  packshots {done}/{skus}", end="", file=sys.stderr, flush=True)

    make_catalog(skus, out, base_uri.rstrip("/") + "/images", seed, progress)
    if not quiet:
        print(file=sys.stderr)
    return upload_catalog(out, base_uri) if upload else None


def prepare_trigger(
    brand: str,
    manifest_uri: str,
    specs: list[str],
    provider: str,
    drop_id: str | None,
    shard_size: int = 0,
    priority: str = "normal",
    dry_run: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """Validates the request and the manifest here, before anything is triggered; returns
    (campaign id, run id, conf). The run id is derived from the campaign key."""
    from atelier.campaign import identify

    conf = {
        "brand": brand,
        "manifest_uri": manifest_uri,
        "output_specs": specs,
        "provider": provider,
        "drop_id": drop_id or "",
        "shard_size": shard_size,
        "priority": priority,
        "dry_run": dry_run,
    }
    return identify(open_storage(), conf)


def progress_line(counts: dict[str, int], total: int, width: int = 32) -> str:
    done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
    frac = done / total if total else 0.0
    bar = "█" * round(frac * width) + "·" * (width - round(frac * width))
    return (
        f"  [{bar}] {done}/{total} renders  ({counts.get('succeeded', 0)} rendered, "
        f"{counts.get('skipped', 0)} duplicates, {counts.get('failed', 0)} failed)"
    )


def wait_for_run(af: Any, run_id: str, campaign_id: str, show: bool = True, timeout: float = 7200) -> str:
    """Polls the run and shows ledger progress until the run ends; returns the run's state. Rides
    out a database or api-server restart (it reconnects and keeps watching)."""
    import psycopg
    import urllib3
    from airflow_client.client import ApiException

    from atelier import ledger

    conn = None
    deadline = time.monotonic() + timeout
    state, last, tty = "queued", "", sys.stderr.isatty()
    try:
        while time.monotonic() < deadline:
            try:
                run_state = af.run(run_id).state
                state = str(getattr(run_state, "value", run_state))
                if show:
                    conn = conn if conn is not None and not conn.closed else open_ledger()
                    try:
                        camp = ledger.campaign(conn, campaign_id)
                        total = camp.render_count or 0
                        counts = ledger.state_counts(conn, campaign_id)
                        line = progress_line(counts, total) if total else "  validating and planning…"
                    except KeyError:
                        line = "  waiting for the run to start…"
                    line = f"{line}  run: {state}"
                    if tty:
                        print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
                    elif line != last:
                        print(line, file=sys.stderr, flush=True)
                    last = line
            # urllib3's MaxRetryError: the api-server is restarting (connection refused)
            except (psycopg.OperationalError, ConnectionError, OSError, urllib3.exceptions.HTTPError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                print(f"  (watching: {type(exc).__name__}; retrying)", file=sys.stderr, flush=True)
            except ApiException as exc:  # the api-server answering 5xx while its database restarts
                if exc.status is not None and exc.status < 500:
                    raise
                print(f"  (watching: Airflow API {type(exc).__name__}; retrying)", file=sys.stderr, flush=True)
            if state in ("success", "failed"):
                break
            time.sleep(2)
    finally:
        if conn is not None:
            conn.close()
        if show and tty:
            print(file=sys.stderr)
    return state


def fetch_outputs(campaign_id: str, dest: Path) -> Path:
    """Copies a campaign's images (named <sku>__<spec>.<ext>), report and contact sheet locally."""
    from concurrent.futures import ThreadPoolExecutor

    from atelier.storage import split_s3

    storage = open_storage()
    camp_dir = dest / campaign_id
    (camp_dir / "images").mkdir(parents=True, exist_ok=True)
    bucket = settings().reports_bucket
    for name in ("report.json", "contact_sheet.html"):
        data = storage.client.get_object(Bucket=bucket, Key=f"campaigns/{campaign_id}/{name}")["Body"].read()
        (camp_dir / name).write_bytes(data)
    report = json.loads((camp_dir / "report.json").read_text())

    def copy(r: dict[str, Any]) -> None:
        b, k = split_s3(r["uri"])
        ext = k.rsplit(".", 1)[-1]
        (camp_dir / "images" / f"{r['sku']}__{r['spec']}.{ext}").write_bytes(
            storage.client.get_object(Bucket=b, Key=k)["Body"].read()
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(copy, [r for r in report["renders"] if r["uri"]]))
    return camp_dir
