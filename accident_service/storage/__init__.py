"""Object storage: one small interface, an S3 and a local-directory implementation.

``make_store(settings)`` picks the implementation from ``STORAGE_URL``
(``s3://bucket[/prefix]`` or ``file:///path``). Callers see only
:class:`ObjectStore`; vendor errors are turned into ours
(a missing key is ``FileNotFoundError``, an unreachable store ``StorageUnavailable``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import urlparse

from accident_service.settings import Settings


class StorageUnavailable(RuntimeError):
    """The store could not be reached or refused the operation; retry later."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    data: bytes
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        """Store ``data`` under ``key`` (overwrite allowed). Raises StorageUnavailable."""

    def get(self, key: str) -> StoredObject:
        """Raises FileNotFoundError for a missing key, StorageUnavailable otherwise."""

    def exists(self, key: str) -> bool:
        """Raises StorageUnavailable when the store cannot answer."""

    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error."""

    def presigned_url(self, key: str, *, expires_in: int) -> str:
        """A URL that reads the object for ``expires_in`` seconds, without other credentials."""

    def check(self) -> None:
        """Raise StorageUnavailable unless the store is reachable (readiness probe)."""

    def written_before(self, cutoff: datetime, *, prefix: str) -> Iterator[str]:
        """The keys under ``prefix`` of the objects last written before ``cutoff``, every one (a listing of the
        whole prefix, page by page). Raises StorageUnavailable."""


def make_store(settings: Settings) -> ObjectStore:
    parsed = urlparse(settings.STORAGE_URL)
    if parsed.scheme == "s3":
        from accident_service.storage.s3 import S3ObjectStore

        return S3ObjectStore(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=settings.S3_ENDPOINT_URL or None,
            region=settings.S3_REGION,
            create_bucket=settings.S3_CREATE_BUCKET,
        )
    from accident_service.storage.local import LocalObjectStore

    return LocalObjectStore(root=local_path(settings.STORAGE_URL), secret_key=settings.SECRET_KEY)


def local_path(storage_url: str) -> str:
    """The directory of a ``file:`` URL: ``file:///srv/x`` is absolute, ``file://./var/x`` relative.

    urlparse reads the first part of a relative path as a host name, so it is put back in front.
    """
    parsed = urlparse(storage_url)
    if parsed.netloc in ("", "localhost"):
        return parsed.path
    return parsed.netloc + parsed.path
