"""Against moto's S3 server over HTTP (started by `make up`)."""

from __future__ import annotations

import hashlib

import pytest

from atelier.storage import Storage, StorageError, render_object_key


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
