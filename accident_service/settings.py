"""Typed settings, read once from ``config/defaults.toml`` and the environment.

Every key of the defaults file is also an environment variable name; the
environment wins, and ``create_app(config={...})`` overrides both (tests).
A missing or malformed value stops startup with :class:`SettingsError`
naming the variable, never a stack trace deep inside a request.
"""

from __future__ import annotations

import binascii
import math
import os
import secrets
import tomllib
from base64 import b64decode
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
    _check_numbers(values)
    _check_urls(values)
    values["LOG_LEVEL"] = values["LOG_LEVEL"].strip().upper()  # "info" works too; kept as logging spells it
    if values["LOG_LEVEL"] not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {values['LOG_LEVEL']!r}")
    _check_aes_key(values["WECHAT_ENCODING_AES_KEY"])
    # Every push and the URL check (GET echostr) are signed with the token; an
    # empty one is a signature anybody can compute, in any environment.
    if not values["WECHAT_TOKEN"].strip():
        raise SettingsError("WECHAT_TOKEN: must not be empty (the token set on the official account's "
                            "server configuration page)")
    if values["APP_ENV"] == "production":
        for name in ("SECRET_KEY", "WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN"):
            if not values[name] or values[name].startswith("dev-") or values[name] == "wx-dev-app":
                raise SettingsError(f"{name}: must be set to a real value when APP_ENV=production")
    for name in ("PHOTO_CHECKLIST",):
        if not values[name]:
            raise SettingsError(f"{name}: needs at least one item")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class NumberRange:
    """The values a numeric setting accepts: ``minimum`` and ``maximum`` included.

    ``above`` instead of ``minimum`` excludes the bound (a float timeout must be
    more than 0, however little). ``why`` is shown to the operator.
    """

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    why: str = ""

    def refuses(self, value: float) -> bool:
        return not (math.isfinite(value)
                    and (self.minimum is None or value >= self.minimum)
                    and (self.above is None or value > self.above)
                    and (self.maximum is None or value <= self.maximum))

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            text = f"between {self.minimum} and {self.maximum}"
        elif self.maximum is not None:
            text = f"at most {self.maximum}"
        elif self.above is not None:
            text = f"more than {self.above}"
        else:
            text = f"at least {self.minimum}"
        return f"{text} ({self.why})" if self.why else text


def number_ranges() -> dict[str, NumberRange]:
    """The accepted range of every numeric setting (a test checks none is missing)."""
    positive = NumberRange(minimum=1)
    return {
        "PRESIGNED_URL_SECONDS": NumberRange(1, 7 * 24 * 3600, why="S3 refuses links valid for over 7 days"),
        "WECHAT_API_TIMEOUT_SECONDS": NumberRange(above=0),
        "WECHAT_MAX_BODY_BYTES": positive,
        "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": NumberRange(0, why="0 turns the check off"),
        "INBOX_LEASE_SECONDS": positive,
        "INBOX_MAX_ATTEMPTS": positive,
        "OUTBOX_MAX_ATTEMPTS": positive,
        "PHOTO_MAX_BYTES": positive,
        "PHOTO_MIN_SHORT_SIDE": positive,
        "PHOTO_MAX_PIXELS": NumberRange(1, _pillow_pixel_limit(),
                                        why="above it Pillow treats every photo as a decompression bomb"),
        "PHOTO_MAX_CAPTURE_AGE_MINUTES": positive,
        "BOOKING_LEAD_MINUTES": NumberRange(0, why="0 offers slots starting now"),
        "BOOKING_OFFER_COUNT": NumberRange(1, 9, why="drivers choose an offer with one digit"),
        "BOOKING_NEAREST_STATIONS": positive,
        "BOOKING_SEARCH_DAYS": positive,
        "REMINDER_MINUTES": positive,
        "DRAFT_EXPIRY_MINUTES": positive,
        "NO_SHOW_GRACE_MINUTES": NumberRange(0, why="0 closes a no-show as soon as the slot ends"),
        "SLOT_GENERATION_DAYS": positive,
        "JOIN_QR_EXPIRE_SECONDS": NumberRange(1, 30 * 24 * 3600, why="WeChat's temporary QR codes last 30 days"),
    }


def _pillow_pixel_limit() -> int | None:
    """Pillow's decompression-bomb warning level, which photo intake refuses to go above."""
    from PIL import Image  # imported here: only settings validation needs it, not every importer

    return Image.MAX_IMAGE_PIXELS


def _check_numbers(values: dict[str, Any]) -> None:
    for name, accepted in number_ranges().items():
        if accepted.refuses(values[name]):
            raise SettingsError(f"{name}: must be {accepted.describe()}, got {values[name]!r}")
    # A photo's pixel count is at least its short side squared: above the cap, every photo is refused.
    if values["PHOTO_MIN_SHORT_SIDE"] ** 2 > values["PHOTO_MAX_PIXELS"]:
        raise SettingsError(f"PHOTO_MIN_SHORT_SIDE: {values['PHOTO_MIN_SHORT_SIDE']} squared is above "
                            f"PHOTO_MAX_PIXELS ({values['PHOTO_MAX_PIXELS']}), so no photo could pass")


def _check_urls(values: dict[str, Any]) -> None:
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
    # file://./var is relative (urlparse reads "." as the host); file:// and file://localhost name no directory.
    if storage.scheme == "file" and not storage.path.strip("/") and storage.netloc in {"", "localhost"}:
        raise SettingsError(f"STORAGE_URL: no directory in {values['STORAGE_URL']!r}; use file:///path")
    if values["S3_ENDPOINT_URL"]:
        _check_http_url("S3_ENDPOINT_URL", values["S3_ENDPOINT_URL"], example="http://minio:9000", path_allowed=False)
    _check_http_url("WECHAT_API_BASE_URL", values["WECHAT_API_BASE_URL"],
                    example="https://api.weixin.qq.com/cgi-bin/", path_allowed=True)
    if not values["WECHAT_API_BASE_URL"].endswith("/"):
        raise SettingsError("WECHAT_API_BASE_URL: must end with '/' (like https://api.weixin.qq.com/cgi-bin/)")
    if values["REDIS_URL"]:
        _check_redis_url(values["REDIS_URL"])


def _check_http_url(name: str, value: str, *, example: str, path_allowed: bool) -> None:
    parsed = urlparse(value)
    try:
        parsed.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as exc:
        raise SettingsError(f"{name}: bad port in {value!r} ({exc}); expected a URL like {example}") from exc
    extra = (parsed.path not in {"", "/"} and not path_allowed) or parsed.query or parsed.fragment
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or extra:
        shape = "http(s)://host[:port]/path/" if path_allowed else "http(s)://host[:port]"
        raise SettingsError(f"{name}: expected {shape} (like {example}), got {value!r}")


def _check_redis_url(value: str) -> None:
    """The shapes redis.Redis.from_url accepts; parsed only, Redis is not contacted at startup."""
    parsed = urlparse(value)
    example = "redis://host:6379/0, rediss://host:6380/0 or unix:///run/redis.sock"
    if parsed.scheme == "unix":
        if not parsed.path:
            raise SettingsError(f"REDIS_URL: no socket path in {value!r}; expected {example}")
        return
    if parsed.scheme not in {"redis", "rediss"}:
        raise SettingsError(f"REDIS_URL: expected {example}, got {value!r}")
    try:
        parsed.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL: bad port in {value!r} ({exc}); expected {example}") from exc
    if not parsed.hostname:
        raise SettingsError(f"REDIS_URL: no host in {value!r}; expected {example}")
    database = parsed.path.strip("/")
    if database and not database.isdigit():
        raise SettingsError(f"REDIS_URL: the database after the host must be a number, got {database!r}")


def _check_aes_key(key: str) -> None:
    """EncodingAESKey: 43 base64 characters, the 32-byte AES key without its trailing '='."""
    if not key:
        return  # plain mode only
    if len(key) != 43:
        raise SettingsError(f"WECHAT_ENCODING_AES_KEY: must be 43 characters long, got {len(key)}")
    try:
        decoded = b64decode(key + "=", validate=True)
    except binascii.Error as exc:
        raise SettingsError("WECHAT_ENCODING_AES_KEY: not base64 (letters, digits, '+' and '/'); "
                            "copy it again from the official account's server configuration page") from exc
    if len(decoded) != 32:
        raise SettingsError(f"WECHAT_ENCODING_AES_KEY: decodes to {len(decoded)} bytes, expected 32")


def _development_secret(data_dir: Path) -> str:
    """A random key kept in the data directory so sessions survive restarts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()
