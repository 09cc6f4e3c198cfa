"""One contract, two stores: the local directory and S3 over real HTTP (moto server)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from accident_service.storage import StorageUnavailable
from accident_service.storage.local import LocalObjectStore
from accident_service.storage.s3 import S3ObjectStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3_bucket_name):
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects", secret_key="k")
    moto = request.getfixturevalue("moto_s3")
    return S3ObjectStore(bucket=s3_bucket_name, endpoint_url=moto.url, create_bucket=True)


def test_put_then_get_returns_bytes_type_and_metadata(store):
    data = bytes(range(256)) * 10
    store.put("cases/2026/11/C1/abc.jpg", data, content_type="image/jpeg",
              metadata={"sha256": hashlib.sha256(data).hexdigest(), "case": "C1"})
    obj = store.get("cases/2026/11/C1/abc.jpg")
    assert obj.data == data
    assert obj.content_type == "image/jpeg"
    assert obj.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert obj.metadata["case"] == "C1"


def test_missing_key_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.get("nope/missing.jpg")
    assert store.exists("nope/missing.jpg") is False


def test_exists_and_delete(store):
    store.put("a/b.txt", b"x", content_type="text/plain")
    assert store.exists("a/b.txt")
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # deleting twice is harmless


@pytest.mark.parametrize("writes", [1, 2])
def test_a_delete_on_a_versioned_bucket_leaves_no_version_behind(moto_s3, s3_bucket_name, writes):
    """Retention deletes a photo to be rid of it: on a bucket with versioning on (a policy, MinIO's site
    replication), a plain DeleteObject only hides it behind a delete marker (review)."""
    store = S3ObjectStore(bucket=s3_bucket_name, endpoint_url=moto_s3.url, create_bucket=True)
    store.check()
    store._client.put_bucket_versioning(Bucket=s3_bucket_name, VersioningConfiguration={"Status": "Enabled"})
    for _ in range(writes):  # a photo's message tried again stores the same key again: one version a try
        store.put("cases/C1/a.jpg", b"photo", content_type="image/jpeg")
    store.put("cases/C1/a.jpg.other", b"another object under a longer key", content_type="image/jpeg")

    store.delete("cases/C1/a.jpg")

    listed = store._client.list_object_versions(Bucket=s3_bucket_name, Prefix="cases/C1/")
    left = [(entry["Key"], "marker" if "Size" not in entry else "version")
            for entry in (*listed.get("Versions", ()), *listed.get("DeleteMarkers", ()))]
    assert left == [("cases/C1/a.jpg.other", "version")]


def test_overwrite_with_identical_bytes_is_harmless(store):
    store.put("k.bin", b"same", content_type="application/octet-stream")
    store.put("k.bin", b"same", content_type="application/octet-stream")
    assert store.get("k.bin").data == b"same"


def test_check_passes_when_reachable(store):
    store.check()


def test_presigned_url_reads_the_object_without_credentials(store, app, tmp_path):
    store.put("p/q.jpg", b"\xff\xd8photo", content_type="image/jpeg")
    url = store.presigned_url("p/q.jpg", expires_in=60)
    if isinstance(store, LocalObjectStore):
        app.extensions["accident_service"].store = store
        response = app.test_client().get(url)
        assert response.status_code == 200 and response.data == b"\xff\xd8photo"
        assert app.test_client().get(url[:-3] + "xyz").status_code == 403
    else:
        response = requests.get(url, timeout=5)
        assert response.status_code == 200 and response.content == b"\xff\xd8photo"


def test_bucket_is_private(moto_s3, s3_bucket_name):
    store = S3ObjectStore(bucket=s3_bucket_name, endpoint_url=moto_s3.url, create_bucket=True)
    store.put("secret.jpg", b"x", content_type="image/jpeg")
    # moto accepts anonymous reads only if the ACL allows them; the object has the default private ACL
    acl = store._client.get_object_acl(Bucket=s3_bucket_name, Key="secret.jpg")
    assert all(g["Grantee"].get("URI", "").endswith("AllUsers") is False for g in acl["Grants"])


def test_a_vanished_bucket_is_made_again_on_the_next_attempt(moto_s3, s3_bucket_name):
    """A wiped store (a fresh MinIO volume) costs one failed attempt, which the caller retries."""
    import boto3

    store = S3ObjectStore(bucket=s3_bucket_name, endpoint_url=moto_s3.url, create_bucket=True)
    store.put("first.jpg", b"1", content_type="image/jpeg")
    admin = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1")
    admin.delete_object(Bucket=s3_bucket_name, Key="first.jpg")
    admin.delete_bucket(Bucket=s3_bucket_name)
    with pytest.raises(StorageUnavailable):
        store.put("second.jpg", b"2", content_type="image/jpeg")
    store.put("second.jpg", b"2", content_type="image/jpeg")
    assert store.get("second.jpg").data == b"2"


def test_unreachable_s3_raises_storage_unavailable():
    from tests.support.servers import free_port

    store = S3ObjectStore(bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}", create_bucket=True)
    with pytest.raises(StorageUnavailable):
        store.put("k", b"x", content_type="text/plain")
    with pytest.raises(StorageUnavailable):
        store.check()


def test_local_store_rejects_path_traversal(tmp_path):
    store = LocalObjectStore(tmp_path, secret_key="k")
    for key in ("../etc/passwd", "/abs", "a/../../b"):
        with pytest.raises(ValueError):
            store.put(key, b"x", content_type="text/plain")


def test_local_url_expires(tmp_path, app):
    import time

    store = LocalObjectStore(tmp_path, secret_key="k")
    store.put("e.jpg", b"x", content_type="image/jpeg")
    token = store.presigned_url("e.jpg", expires_in=0).rsplit("/", 1)[1]
    time.sleep(1.1)
    from accident_service.storage.local import InvalidObjectUrl

    with pytest.raises(InvalidObjectUrl):
        store.resolve_url_token(token)


def test_written_before_lists_every_key_under_the_prefix_written_before_the_cutoff(store):
    old = [f"cases/2026/12/C{n}/{n:04d}.jpg" for n in range(3)]
    for key in old:
        store.put(key, b"old", content_type="image/jpeg", metadata={"case": "C"})
    store.put("other/old.bin", b"old", content_type="application/octet-stream")
    cutoff = datetime.now(UTC) + timedelta(seconds=0.5)
    time.sleep(2.1)  # a store may keep the time to the second only
    store.put("cases/2026/12/C9/new.jpg", b"new", content_type="image/jpeg")

    assert sorted(store.written_before(cutoff, prefix="cases/")) == old  # no metadata files, nothing newer
    assert list(store.written_before(cutoff, prefix="none/")) == []
