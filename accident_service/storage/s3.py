"""S3-compatible store through boto3 (AWS S3, MinIO via S3_ENDPOINT_URL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from accident_service.storage import StorageUnavailable, StoredObject

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3ObjectStore:
    def __init__(self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str = "us-east-1", create_bucket: bool = False) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        addressing = Config(signature_version="s3v4", s3={"addressing_style": "path"})

        def client(read_timeout: int, retries: dict[str, Any]):
            return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=addressing.merge(
                Config(connect_timeout=2, read_timeout=read_timeout, retries={**retries, "mode": "standard"})))

        # Reads, deletes and listings (the desk, retention): a few tries, as botocore retries what S3 asks to
        # be retried (500, 503 SlowDown, a keep-alive connection the server just closed).
        self._client = client(10, {"max_attempts": 2})
        # Photo intake's writes (the only writes): one short try. Intake retries with its own backoff (5 s on)
        # and has the driver told, while a photo's attempt holds their next messages back: through the tries
        # above (three of 10 s) a store that takes connections but never answers held them for 32 s. 5 s to
        # answer is ample for a photo on the store's network.
        self._put_client = client(5, {"total_max_attempts": 1})
        # The readiness probe has its own client: one try, 2 s to connect, 2 s to answer. Through
        # the client above, a store that accepts connections but never answers held /readyz for
        # 30 s (3 tries of 10 s) and the orchestrator's probes piled up behind it.
        self._probe_client = client(2, {"total_max_attempts": 1})
        self._bucket_checked = not create_bucket
        self._create_bucket = create_bucket

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _ensure_bucket(self, client: Any = None) -> None:
        if self._bucket_checked:
            return
        client = client or self._client
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in _MISSING_CODES:
                raise
            client.create_bucket(Bucket=self.bucket)
        self._bucket_checked = True

    def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        try:
            self._ensure_bucket(self._put_client)
            self._put_client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                    ContentType=content_type, Metadata=metadata or {})
        except (BotoCoreError, ClientError) as exc:
            if isinstance(exc, ClientError) and _code(exc) == "NoSuchBucket" and self._create_bucket:
                self._bucket_checked = False  # the bucket went away (a wiped store): make it again next time
            raise StorageUnavailable(f"s3: cannot store {key}: {exc}") from exc

    def get(self, key: str) -> StoredObject:
        try:
            self._ensure_bucket()
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = response["Body"].read()
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise FileNotFoundError(key) from exc
            raise StorageUnavailable(f"s3: cannot read {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"s3: cannot read {key}: {exc}") from exc
        return StoredObject(key, data, response.get("ContentType", "application/octet-stream"),
                            dict(response.get("Metadata", {})))

    def exists(self, key: str) -> bool:
        try:
            self._ensure_bucket()
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise StorageUnavailable(f"s3: cannot check {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"s3: cannot check {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        """Every version of the object, and any delete marker: on a bucket with versioning on, a DeleteObject
        without a version only hides the object behind a marker, and retention deletes to be rid of it. On a
        bucket without, its one version is "null"."""
        full_key = self._key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full_key)  # the current one first: gone at once
            pages = self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full_key)
            for version in (entry["VersionId"] for page in pages
                            for entry in (*page.get("Versions", ()), *page.get("DeleteMarkers", ()))
                            if entry["Key"] == full_key):  # the prefix also lists longer keys
                self._client.delete_object(Bucket=self.bucket, Key=full_key, VersionId=version)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"s3: cannot delete {key}: {exc}") from exc

    def presigned_url(self, key: str, *, expires_in: int) -> str:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_in)

    def written_before(self, cutoff: datetime, *, prefix: str) -> Iterator[str]:
        try:
            self._ensure_bucket()
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=self._key(prefix))
            for page in pages:
                for entry in page.get("Contents", ()):
                    if entry["LastModified"] < cutoff:
                        yield entry["Key"][len(self.prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"s3: cannot list {prefix}: {exc}") from exc

    def check(self) -> None:
        try:
            self._ensure_bucket(self._probe_client)
            self._probe_client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"s3 bucket {self.bucket!r} not reachable: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
