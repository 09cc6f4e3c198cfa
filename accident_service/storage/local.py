"""The embedded default store: a directory, with signed, expiring read URLs."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from accident_service.storage import StorageUnavailable, StoredObject

URL_PREFIX = "/storage/o/"


class InvalidObjectUrl(PermissionError):
    """A local object URL whose signature is wrong or expired."""


class LocalObjectStore:
    def __init__(self, root: str | os.PathLike[str], *, secret_key: str) -> None:
        self.root = Path(root)
        self._signer = URLSafeTimedSerializer(secret_key, salt="local-object-url")

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader never sees half an object.
            _atomic_write(path, data)
            _atomic_write(_meta_path(path), json.dumps(
                {"content_type": content_type, "metadata": metadata or {}}).encode())
        except OSError as exc:
            raise StorageUnavailable(f"local store: cannot write {key}: {exc.strerror}") from exc

    def get(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            data = path.read_bytes()
            meta = json.loads(_meta_path(path).read_text()) if _meta_path(path).exists() else {}
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(f"local store: cannot read {key}: {exc.strerror}") from exc
        return StoredObject(key, data, meta.get("content_type", "application/octet-stream"), meta.get("metadata", {}))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _meta_path(path).unlink(missing_ok=True)

    def presigned_url(self, key: str, *, expires_in: int) -> str:
        self._path(key)
        token = self._signer.dumps({"k": key, "e": expires_in})
        return URL_PREFIX + token

    def resolve_url_token(self, token: str) -> str:
        """The key a URL token grants, or InvalidObjectUrl when forged or expired."""
        try:
            payload = self._signer.loads(token, max_age=24 * 3600)
            self._signer.loads(token, max_age=int(payload["e"]))
        except (SignatureExpired, BadSignature, KeyError, TypeError, ValueError) as exc:
            raise InvalidObjectUrl("object URL is invalid or expired") from exc
        return str(payload["k"])

    def written_before(self, cutoff: datetime, *, prefix: str) -> Iterator[str]:
        """Also what a write that crashed left (a temporary file): deleting its key deletes it."""
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root

        def fail(exc: OSError) -> None:
            raise StorageUnavailable(f"local store: cannot list {prefix}: {exc.strerror}") from exc

        if not top.is_dir():
            return  # nothing stored there yet
        try:
            for directory, _subdirectories, names in os.walk(top, onerror=fail):
                for name in names:
                    if name.endswith(_META_SUFFIX):
                        continue  # goes with its object
                    path = Path(directory, name)
                    try:
                        written = path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted since the directory was read
                    if datetime.fromtimestamp(written, UTC) < cutoff:
                        yield path.relative_to(self.root).as_posix()
        except OSError as exc:
            raise StorageUnavailable(f"local store: cannot list {prefix}: {exc.strerror}") from exc

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # A name of its own: a photo waiting out an outage checks the store too, from any thread or process.
            probe = self.root / f".readyz-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"local store at {self.root} not writable: {exc.strerror}") from exc


_META_SUFFIX = ".meta.json"
_TEMPORARY = ".tmp-"


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + _META_SUFFIX)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMPORARY)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
