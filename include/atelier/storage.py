"""S3: reading drops (manifests, packshots) and writing renders and reports exactly once.

Render objects are content-addressed (``renders/<rk[:2]>/<render_key>.<ext>``) and written with a
conditional put (``If-None-Match: *``), so a retried or duplicated task can never write a key twice.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from atelier.images import MAX_INPUT_BYTES
from atelier.settings import Settings, settings

FETCH_THREADS = 16


class StorageError(RuntimeError):
    """An S3 or HTTP read/write failed in a way that retrying will not fix."""


class InputUnavailable(RuntimeError):
    """An input could not be read now for a reason a later try may not have (timeout, 5xx, 429)."""


class InputChanged(StorageError):
    """An input's bytes are not the ones fingerprinted when the drop was planned."""


def split_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def s3_client(cfg: Settings | None = None) -> Any:
    """A boto3 S3 client for the CLI and tests; tasks get theirs from the Airflow connection."""
    import boto3
    from botocore.config import Config

    cfg = cfg or settings()
    return boto3.client(
        "s3",
        endpoint_url=cfg.s3_endpoint or None,
        region_name=cfg.s3_region,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=FETCH_THREADS * 2,
        ),
        **cfg.aws_env(),
    )


# Server-side encryption of every object Atelier writes, from the S3 connection's extra, where the
# amazon provider keeps per-service settings (beside S3Hook's bucket_name, transfer_config_args):
#   {"service_config": {"s3": {"server_side_encryption":
#       {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "<key ARN>", "BucketKeyEnabled": true}}}}
# The names are PutObject's. SSE-C is refused: its key would have to go with every read as well.
SSE_ALGORITHMS = frozenset({"AES256", "aws:kms", "aws:kms:dsse"})
SSE_KMS_ARGS = frozenset({"SSEKMSKeyId", "SSEKMSEncryptionContext", "BucketKeyEnabled"})


def sse_args(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked server-side encryption arguments of an S3 connection's extra ({} when it sets
    none). Raises ValueError for an unknown argument or algorithm, or KMS arguments without KMS."""
    s3 = ((extra or {}).get("service_config") or {}).get("s3") or {}
    args = s3.get("server_side_encryption") or {}
    if not isinstance(args, Mapping):
        raise ValueError("service_config.s3.server_side_encryption must be an object of PutObject arguments")
    unknown = sorted(set(args) - SSE_KMS_ARGS - {"ServerSideEncryption"})
    if unknown:
        raise ValueError(f"server_side_encryption: unsupported argument(s) {unknown} (SSE-C is not supported)")
    if not args:
        return {}
    algorithm = args.get("ServerSideEncryption")
    if algorithm not in SSE_ALGORITHMS:
        raise ValueError(f"server_side_encryption: ServerSideEncryption must be one of {sorted(SSE_ALGORITHMS)}")
    if not algorithm.startswith("aws:kms") and set(args) & SSE_KMS_ARGS:
        raise ValueError(f"server_side_encryption: {sorted(set(args) & SSE_KMS_ARGS)} need an aws:kms algorithm")
    if "BucketKeyEnabled" in args and not isinstance(args["BucketKeyEnabled"], bool):
        raise ValueError("server_side_encryption: BucketKeyEnabled must be true or false")
    return dict(args)


def local_storage(cfg: Settings | None = None) -> Storage:
    """Storage for the CLI and tests: ``s3_client``, encrypting as the S3 connection's extra says."""
    cfg = cfg or settings()
    return Storage(s3_client(cfg), sse_args(cfg.s3_connection_extra()))


def render_object_key(render_key: str, extension: str) -> str:
    return f"renders/{render_key[:2]}/{render_key}.{extension}"


@dataclass(frozen=True)
class PutResult:
    created: bool  # False: the object already existed (an earlier attempt wrote it)
    sha256: str  # of the object as stored
    size: int


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class Storage:
    def __init__(self, client: Any, sse: Mapping[str, Any] | None = None):
        """``sse``: server-side encryption arguments (``sse_args``) sent with every object written."""
        self.client = client
        self.sse = dict(sse or {})

    # -- reading ------------------------------------------------------------------------------
    def open(self, uri: str) -> IO[bytes]:
        bucket, key = split_s3(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
                raise FileNotFoundError(f"{uri} does not exist") from exc
            raise

    def read(self, uri: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
        if uri.startswith("https://"):
            return fetch_https(uri, max_bytes)
        body = self.open(uri)
        data = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise StorageError(f"{uri} is larger than {max_bytes} bytes")
        return data

    def read_fingerprinted(self, uri: str, fingerprint: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
        """Reads exactly the input that was fingerprinted at plan time: an S3 object only if its ETag
        still matches (``If-Match``), an https image only if its bytes hash to the fingerprint.
        Raises InputChanged when the content changed since planning."""
        if fingerprint.startswith("sha256:"):
            data = fetch_https(uri, max_bytes)
            if "sha256:" + hashlib.sha256(data).hexdigest() != fingerprint:
                raise InputChanged(f"{uri} changed since the drop was planned; trigger the drop again")
            return data
        if not fingerprint.startswith("etag:"):
            raise FileNotFoundError(f"{uri} had no usable content when the drop was planned ({fingerprint})")
        etag, _, size = fingerprint.removeprefix("etag:").rpartition(":")
        bucket, key = split_s3(uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"]
        except Exception as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "412"):
                raise InputChanged(f"{uri} changed since the drop was planned; trigger the drop again") from exc
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise FileNotFoundError(f"{uri} was deleted after the drop was planned") from exc
            raise
        data = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise StorageError(f"{uri} is larger than {max_bytes} bytes")
        if str(len(data)) != size:
            raise InputChanged(f"{uri} changed since the drop was planned (size {size} → {len(data)})")
        return data

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object's HEAD (with its SHA-256 checksum), or None when there is no such object."""
        try:
            return dict(self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, bucket: str, key: str) -> bool:
        return self.head(bucket, key) is not None

    def list_keys(self, bucket: str, prefix: str) -> set[str]:
        """Every key under ``prefix``: 1,000 per request, far cheaper than a HEAD per object."""
        keys: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(o["Key"] for o in page.get("Contents", []))
        return keys

    def exists_many(self, bucket: str, keys: Iterable[str]) -> dict[str, bool]:
        keys = list(keys)
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            return dict(zip(keys, pool.map(lambda k: self.exists(bucket, k), keys), strict=True))

    def fingerprints(self, uris: Iterable[str]) -> dict[str, str]:
        """A content fingerprint per input image without downloading it: S3's ETag (the MD5 of
        the bytes for single-part uploads) and size, listed in bulk per prefix; https images are
        hashed after a safe download. An input that cannot be read gets ``error:<reason>`` (it fails
        its own renders at plan time, not the whole plan)."""
        wanted: dict[tuple[str, str], set[str]] = {}
        result: dict[str, str] = {}
        https: list[str] = []
        for uri in uris:
            if uri.startswith("https://"):
                https.append(uri)
                continue
            bucket, key = split_s3(uri)
            prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            wanted.setdefault((bucket, prefix), set()).add(key)
        for (bucket, prefix), keys in wanted.items():
            found: dict[str, str] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    if obj["Key"] in keys:
                        found[obj["Key"]] = f"etag:{obj['ETag'].strip(chr(34))}:{obj['Size']}"
            for key in keys:
                result[f"s3://{bucket}/{key}"] = found.get(key, "missing")
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            for uri, digest in zip(https, pool.map(_https_fingerprint, https), strict=True):
                result[uri] = digest
        return result

    # -- writing ------------------------------------------------------------------------------
    def put_once(self, bucket: str, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PutResult:
        """Writes ``key`` only if absent, never overwriting. If it exists with the same bytes, or
        as the same render (same ``render-key`` metadata: a provider that is not byte-for-byte
        deterministic rendered it before a crash), the first write stands and is the result.
        Anything else under the key is an error."""
        digest = hashlib.sha256(data).digest()
        sha_b64 = base64.b64encode(digest).decode()
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=metadata,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=sha_b64,
                **self.sse,
            )
            return PutResult(True, digest.hex(), len(data))
        except Exception as exc:
            if _error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise
        head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        existing = head.get("ChecksumSHA256") or head.get("Metadata", {}).get("sha256-b64")
        if existing == sha_b64:
            return PutResult(False, digest.hex(), len(data))
        same_render = "render-key" in metadata and head.get("Metadata", {}).get("render-key") == metadata["render-key"]
        if not (same_render and existing):
            raise StorageError(f"s3://{bucket}/{key} exists with different bytes; refusing to overwrite")
        return PutResult(False, base64.b64decode(existing).hex(), int(head["ContentLength"]))

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> str:
        """Reports are replaced as a whole (one PUT is atomic in S3)."""
        self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, **self.sse)
        return f"s3://{bucket}/{key}"

    def ensure_buckets(self, names: Iterable[str]) -> None:
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        for name in names:
            if name not in existing:
                self.client.create_bucket(Bucket=name)

    def upload_tree(self, files: list[tuple[str, bytes | str]], bucket: str) -> None:
        """Uploads (key, bytes-or-path) pairs in parallel (sample catalogs, demo inputs)."""

        def one(item: tuple[str, bytes | str]) -> None:
            key, body = item
            data = body if isinstance(body, bytes) else open(body, "rb").read()  # noqa: SIM115
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **self.sse)

        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            list(pool.map(one, files))


def fetch_https(uri: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Downloads an https image (its host allowed by the manifest check) through the guarded
    client: no redirects, no credentials, connected only to a vetted public address, within a
    total deadline and ``max_bytes``. Every failure is a StorageError whose message names the URL
    without its query and never quotes the remote body."""
    from atelier import netguard

    try:
        return netguard.fetch(uri, max_bytes, policy=netguard.STRICT, total_timeout_s=60.0)
    except netguard.Refused as exc:
        raise StorageError(f"{netguard.redact(uri)} refused: {exc}") from None
    except netguard.FetchError as exc:
        if exc.transient:
            raise InputUnavailable(str(exc)) from None
        raise StorageError(str(exc)) from None


def _https_fingerprint(uri: str) -> str:
    try:
        return "sha256:" + hashlib.sha256(fetch_https(uri)).hexdigest()
    except Exception as exc:  # any failure is this input's problem, recorded on its renders
        known = isinstance(exc, StorageError | InputUnavailable)
        reason = str(exc) if known else f"download failed ({type(exc).__name__})"
        return f"error:{reason[:500]}"
