"""Typed settings, read once from ``config/defaults.toml`` and the environment.

Every key of the defaults file is also an environment variable name; the
environment wins, and ``create_app(config={...})`` overrides both (tests).
A missing or malformed value stops startup with :class:`SettingsError`
naming the variable, never a stack trace deep inside a request.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

CONFIG_DIR = Path(os.environ.get("ACCIDENT_SERVICE_CONFIG_DIR", Path(__file__).resolve().parent.parent / "config"))
TEMPLATE_PREFIX = "WECHAT_TEMPLATE_"


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    APP_ENV: str
    DATA_DIR: str
    DATABASE_URL: str
    AUTO_MIGRATE: bool
    SECRET_KEY: str
    STORAGE_URL: str
    S3_ENDPOINT_URL: str
    S3_REGION: str
    S3_CREATE_BUCKET: bool
    PRESIGNED_URL_SECONDS: int
    LOG_LEVEL: str
    WECHAT_APP_ID: str
    WECHAT_APP_SECRET: str
    WECHAT_TOKEN: str
    WECHAT_ENCODING_AES_KEY: str
    WECHAT_API_BASE_URL: str
    WECHAT_API_TIMEOUT_SECONDS: float
    WECHAT_MAX_BODY_BYTES: int
    WECHAT_TIMESTAMP_TOLERANCE_SECONDS: int
    WECHAT_REQUIRE_ENCRYPTION: bool
    REDIS_URL: str
    INBOX_LEASE_SECONDS: int
    INBOX_MAX_ATTEMPTS: int
    INBOX_PROCESS_INLINE: bool
    OUTBOX_MAX_ATTEMPTS: int
    PHOTO_MAX_BYTES: int
    PHOTO_MIN_SHORT_SIDE: int
    PHOTO_MAX_PIXELS: int
    PHOTO_MAX_CAPTURE_AGE_MINUTES: int
    PHOTO_CHECKLIST: tuple[str, ...]
    BOOKING_LEAD_MINUTES: int
    BOOKING_OFFER_COUNT: int
    BOOKING_NEAREST_STATIONS: int
    BOOKING_SEARCH_DAYS: int
    REMINDER_MINUTES: int
    DRAFT_EXPIRY_MINUTES: int
    NO_SHOW_GRACE_MINUTES: int
    SLOT_GENERATION_DAYS: int
    JOIN_QR_EXPIRE_SECONDS: int
    templates: Mapping[str, str] = field(default_factory=dict)

    @property
    def storage_scheme(self) -> str:
        return urlparse(self.STORAGE_URL).scheme

    def template_for(self, kind: str) -> str | None:
        """The template id configured for a notification kind, or None (send text)."""
        return self.templates.get(kind.lower()) or None


def _parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}: expected true/false, got {raw!r}")


def _convert(name: str, annotation: str, raw: Any) -> Any:
    try:
        if annotation == "bool":
            return _parse_bool(name, raw)
        if annotation == "int":
            return int(str(raw).strip())
        if annotation == "float":
            return float(str(raw).strip())
        if annotation.startswith("tuple"):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(s.strip() for s in items if s.strip())
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: expected {annotation}, got {raw!r}") from exc


def load_settings(overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, the environment and ``overrides`` (highest).

    Raises SettingsError naming the variable for anything missing or malformed.
    """
    environ = os.environ if environ is None else environ
    defaults = tomllib.loads((CONFIG_DIR / "defaults.toml").read_text(encoding="utf-8"))
    merged: dict[str, Any] = dict(defaults)
    merged.update({k: v for k, v in environ.items() if k in defaults or k.startswith(TEMPLATE_PREFIX)})
    merged.update(overrides or {})
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "templates":
            continue
        if f.name not in merged:
            raise SettingsError(f"{f.name}: not set and no default in {CONFIG_DIR / 'defaults.toml'}")
        values[f.name] = _convert(f.name, str(f.type), merged[f.name])
    data_dir = values["DATA_DIR"]
    for key in ("DATABASE_URL", "STORAGE_URL"):
        values[key] = values[key].replace("{data_dir}", data_dir)
    values["templates"] = {k[len(TEMPLATE_PREFIX):].lower(): str(v) for k, v in merged.items()
                           if k.startswith(TEMPLATE_PREFIX) and str(v).strip()}
    _validate(values)
    if not values["SECRET_KEY"]:
        values["SECRET_KEY"] = _development_secret(Path(data_dir))
    return Settings(**values)


def _validate(values: dict[str, Any]) -> None:
    if values["APP_ENV"] not in {"development", "production", "test"}:
        raise SettingsError(f"APP_ENV: expected development, production or test, got {values['APP_ENV']!r}")
    try:
        url = make_url(values["DATABASE_URL"])
    except ArgumentError as exc:
        raise SettingsError(f"DATABASE_URL: not a database URL ({values['DATABASE_URL']!r}): {exc}") from exc
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise SettingsError(f"DATABASE_URL: unsupported database {url.get_backend_name()!r}; use sqlite or postgresql")
    storage = urlparse(values["STORAGE_URL"])
    if storage.scheme not in {"file", "s3"}:
        raise SettingsError(f"STORAGE_URL: unknown scheme {storage.scheme!r} in {values['STORAGE_URL']!r}; "
                            "use file:///path or s3://bucket")
    if storage.scheme == "s3" and not storage.netloc:
        raise SettingsError(f"STORAGE_URL: no bucket in {values['STORAGE_URL']!r}; use s3://bucket[/prefix]")
    aes_key = values["WECHAT_ENCODING_AES_KEY"]
    if aes_key and len(aes_key) != 43:
        raise SettingsError("WECHAT_ENCODING_AES_KEY: must be 43 characters long")
    if not values["WECHAT_API_BASE_URL"].endswith("/"):
        raise SettingsError("WECHAT_API_BASE_URL: must end with '/' (like https://api.weixin.qq.com/cgi-bin/)")
    if values["APP_ENV"] == "production":
        for name in ("SECRET_KEY", "WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN"):
            if not values[name] or values[name].startswith("dev-") or values[name] == "wx-dev-app":
                raise SettingsError(f"{name}: must be set to a real value when APP_ENV=production")
    for name in ("PHOTO_CHECKLIST",):
        if not values[name]:
            raise SettingsError(f"{name}: needs at least one item")


def _development_secret(data_dir: Path) -> str:
    """A random key kept in the data directory so sessions survive restarts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()
