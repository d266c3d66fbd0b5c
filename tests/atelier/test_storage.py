"""Against moto's S3 server over HTTP (started by `make up`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from atelier.settings import settings
from atelier.storage import Storage, StorageError, render_object_key, sse_args


def test_put_once_writes_then_recognises_its_own_bytes(storage: Storage, bucket: str):
    key = render_object_key("ab" + "0" * 62, "jpg")
    first = storage.put_once(bucket, key, b"image-bytes", "image/jpeg", {"render-key": "x"})
    assert first.created and first.sha256 == hashlib.sha256(b"image-bytes").hexdigest()
    again = storage.put_once(bucket, key, b"image-bytes", "image/jpeg", {"render-key": "x"})
    assert not again.created  # the idempotent rerun: no second write
    head = storage.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["Metadata"]["render-key"] == "x"
    assert head["ChecksumSHA256"]


def test_put_once_never_overwrites_different_bytes(storage: Storage, bucket: str):
    storage.put_once(bucket, "k", b"one", "application/octet-stream", {})
    with pytest.raises(StorageError, match="different bytes"):
        storage.put_once(bucket, "k", b"two", "application/octet-stream", {})
    assert storage.client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_a_second_rendering_of_the_same_render_keeps_the_first(storage: Storage, bucket: str):
    """A provider that is not byte-for-byte deterministic rendered the same render twice (a crash
    between the write and the record): the first object stands and is the result, no error."""
    storage.put_once(bucket, "r", b"first", "image/png", {"render-key": "rk"})
    again = storage.put_once(bucket, "r", b"second", "image/png", {"render-key": "rk"})
    assert not again.created and (again.sha256, again.size) == (hashlib.sha256(b"first").hexdigest(), 5)
    with pytest.raises(StorageError, match="different bytes"):  # another render under the key: refused
        storage.put_once(bucket, "r", b"other", "image/png", {"render-key": "not-rk"})
    assert storage.client.get_object(Bucket=bucket, Key="r")["Body"].read() == b"first"


def test_fingerprints_follow_content(storage: Storage, bucket: str):
    storage.client.put_object(Bucket=bucket, Key="drop/a.jpg", Body=b"same")
    storage.client.put_object(Bucket=bucket, Key="drop/b.jpg", Body=b"same")
    storage.client.put_object(Bucket=bucket, Key="drop/c.jpg", Body=b"other")
    uris = [f"s3://{bucket}/drop/{n}.jpg" for n in "abcd"]
    fp = storage.fingerprints(uris)
    assert fp[uris[0]] == fp[uris[1]] != fp[uris[2]]
    assert fp[uris[3]] == "missing"


def test_exists_many_and_missing_objects(storage: Storage, bucket: str):
    storage.client.put_object(Bucket=bucket, Key="here", Body=b"x")
    assert storage.exists_many(bucket, ["here", "gone"]) == {"here": True, "gone": False}
    with pytest.raises(FileNotFoundError):
        storage.read(f"s3://{bucket}/gone")


# -- server-side encryption from the S3 connection ------------------------------------------------
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b7c1c1e-atelier-test"


def s3_connection(sse: dict[str, Any]) -> str:
    """An AIRFLOW_CONN_* value for the local S3 endpoint whose extra asks for ``sse``."""
    cfg = settings()
    extra = {"endpoint_url": cfg.s3_endpoint, "region_name": cfg.s3_region}
    extra["service_config"] = {"s3": {"bucket_name": "unused", "server_side_encryption": sse}}
    creds = cfg.aws_env()
    return json.dumps(
        {
            "conn_type": "aws",
            "login": creds["aws_access_key_id"],
            "password": creds["aws_secret_access_key"],
            "extra": extra,
        }
    )


def encryption(storage: Storage, bucket: str, key: str) -> tuple[Any, ...]:
    """What the S3 API says about an object's server-side encryption (its HEAD)."""
    head = storage.client.head_object(Bucket=bucket, Key=key)
    return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId"), head.get("BucketKeyEnabled")


def test_task_writes_carry_the_connections_server_side_encryption(
    monkeypatch: pytest.MonkeyPatch, bucket: str, storage: Storage
):
    """Inside a task, Storage comes from the Airflow connection: its SSE-KMS settings go with every
    write (a render's put_once, a report's or delta manifest's put, an upload), as HEAD shows."""
    from atelier.airflow.resources import from_connections

    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY, "BucketKeyEnabled": True}
    monkeypatch.setenv("AIRFLOW_CONN_ATELIER_SSE_TEST", s3_connection(sse))
    with from_connections(aws_conn_id="atelier_sse_test") as res:
        res.storage.put_once(bucket, render_object_key("cd" + "1" * 62, "png"), b"png", "image/png", {})
        res.storage.put(bucket, "campaigns/c1/report.json", b"{}", "application/json")
        res.storage.upload_tree([("drop/a.jpg", b"jpg")], bucket)
    want = ("aws:kms", KMS_KEY, True)
    assert encryption(storage, bucket, render_object_key("cd" + "1" * 62, "png")) == want
    assert encryption(storage, bucket, "campaigns/c1/report.json") == want
    assert encryption(storage, bucket, "drop/a.jpg") == want
    storage.put(bucket, "plain", b"x", "text/plain")  # the control: no settings, no encryption asked
    assert encryption(storage, bucket, "plain") == (None, None, None)


def test_cli_uploads_encrypt_as_the_s3_connection_says(monkeypatch: pytest.MonkeyPatch, bucket: str, storage: Storage):
    """Outside Airflow (CLI, samples) the same connection variable decides: one source of truth."""
    from atelier import driver

    monkeypatch.setenv("AIRFLOW_CONN_ATELIER_S3", s3_connection({"ServerSideEncryption": "AES256"}))
    driver.open_storage().upload_tree([("inbox/m.csv", b"sku\n")], bucket)
    assert encryption(storage, bucket, "inbox/m.csv") == ("AES256", None, None)


@pytest.mark.parametrize(
    ("sse", "error"),
    [
        ({"SSECustomerKey": "k", "ServerSideEncryption": "AES256"}, "unsupported argument.*SSECustomerKey"),
        ({"ServerSideEncryption": "rot13"}, "must be one of"),
        ({"SSEKMSKeyId": KMS_KEY}, "must be one of"),
        ({"ServerSideEncryption": "AES256", "SSEKMSKeyId": KMS_KEY}, "need an aws:kms algorithm"),
        ({"ServerSideEncryption": "aws:kms", "BucketKeyEnabled": "yes"}, "true or false"),
        ("aws:kms", "must be an object"),
    ],
)
def test_encryption_settings_are_checked(sse: Any, error: str):
    with pytest.raises(ValueError, match=error):
        sse_args({"service_config": {"s3": {"server_side_encryption": sse}}})


def test_no_encryption_settings_ask_for_none():
    assert sse_args(None) == sse_args({}) == sse_args({"service_config": {"s3": {"bucket_name": "b"}}}) == {}
    kms = {"ServerSideEncryption": "aws:kms:dsse", "SSEKMSKeyId": KMS_KEY}
    assert sse_args({"service_config": {"s3": {"server_side_encryption": kms}}}) == kms
