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
import re
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
SMS_TEMPLATE_PREFIX = "SMS_TEMPLATE_"


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
    PHOTO_CHECKLIST_B: tuple[str, ...]
    BOOKING_LEAD_MINUTES: int
    BOOKING_OFFER_COUNT: int
    BOOKING_NEAREST_STATIONS: int
    BOOKING_SEARCH_DAYS: int
    REMINDER_MINUTES: int
    DRAFT_EXPIRY_MINUTES: int
    NO_SHOW_GRACE_MINUTES: int
    SLOT_GENERATION_DAYS: int
    JOIN_QR_EXPIRE_SECONDS: int
    RETAKE_DEADLINE_MINUTES: int
    SMS_SDK_APP_ID: str
    SMS_SECRET_ID: str
    SMS_SECRET_KEY: str
    SMS_SIGN_NAME: str
    SMS_REGION: str
    SMS_ENDPOINT_URL: str
    IDEMPOTENCY_KEY_HOURS: int
    templates: Mapping[str, str] = field(default_factory=dict)
    sms_templates: Mapping[str, str] = field(default_factory=dict)

    @property
    def storage_scheme(self) -> str:
        return urlparse(self.STORAGE_URL).scheme

    def template_for(self, kind: str) -> str | None:
        """The template id configured for a notification kind, or None (send text)."""
        return self.templates.get(kind.lower()) or None

    def sms_template_for(self, kind: str) -> str | None:
        """The SMS template id configured for a notice kind, or None (no SMS for it)."""
        return self.sms_templates.get(kind.lower()) or None

    @property
    def sms_enabled(self) -> bool:
        """SMS is off unless its application and credentials are configured."""
        return bool(self.SMS_SDK_APP_ID and self.SMS_SECRET_ID and self.SMS_SECRET_KEY and self.SMS_SIGN_NAME)


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
    merged.update({k: v for k, v in environ.items()
                   if k in defaults or k.startswith((TEMPLATE_PREFIX, SMS_TEMPLATE_PREFIX))})
    merged.update(overrides or {})
    given = {k for k in (*environ, *(overrides or {})) if k in defaults}  # set by the operator, not defaults
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in ("templates", "sms_templates"):
            continue
        if f.name not in merged:
            raise SettingsError(f"{f.name}: not set and no default in {CONFIG_DIR / 'defaults.toml'}")
        values[f.name] = _convert(f.name, str(f.type), merged[f.name])
    data_dir = _check_data_dir(values["DATA_DIR"])
    for key in ("DATABASE_URL", "STORAGE_URL"):
        values[key] = values[key].replace("{data_dir}", data_dir)
    values["templates"] = {k[len(TEMPLATE_PREFIX):].lower(): str(v) for k, v in merged.items()
                           if k.startswith(TEMPLATE_PREFIX) and str(v).strip()}
    values["sms_templates"] = {k[len(SMS_TEMPLATE_PREFIX):].lower(): str(v) for k, v in merged.items()
                               if k.startswith(SMS_TEMPLATE_PREFIX) and str(v).strip()}
    _validate(values, given)
    if not values["SECRET_KEY"]:
        values["SECRET_KEY"] = _development_secret(Path(data_dir))
    return Settings(**values)


def _check_data_dir(value: str) -> str:
    """DATA_DIR exists (created if missing) and is a directory; the OS's reason otherwise.

    Checked even when nothing is kept there yet, so a typo stops startup here,
    not at the first photo or the first SQLite connection.
    """
    if not value.strip():
        # An empty DATA_DIR would put sqlite:///{data_dir}/... and file://{data_dir}/... at the filesystem root.
        raise SettingsError("DATA_DIR: must not be empty (a directory for the SQLite file, photos and the "
                            "development secret key, like ./var)")
    if "\x00" in value:
        raise SettingsError(f"DATA_DIR: contains a NUL character: {value!r}")
    shown = value if len(value) <= 200 else value[:200] + "..."
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise SettingsError(f"DATA_DIR: {shown!r} exists and is not a directory") from exc
    except OSError as exc:  # a file on the way (Not a directory), permissions, a name too long, ...
        raise SettingsError(f"DATA_DIR: cannot create the directory {shown!r}: "
                            f"{exc.strerror or type(exc).__name__}") from exc
    return value


def _validate(values: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> None:
    """Check every value; ``given`` names the settings the operator set (for blaming the right one)."""
    if values["APP_ENV"] not in {"development", "production", "test"}:
        raise SettingsError(f"APP_ENV: expected development, production or test, got {values['APP_ENV']!r}")
    _check_numbers(values, given)
    _check_urls(values)
    _check_s3_region(values["S3_REGION"])
    given_level, values["LOG_LEVEL"] = values["LOG_LEVEL"], values["LOG_LEVEL"].strip().upper()  # "info" works too
    if values["LOG_LEVEL"] not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {given_level!r}")
    _check_aes_key(values["WECHAT_ENCODING_AES_KEY"])
    # Encrypted pushes carry the AppID, which decryption checks: without it every one of them fails.
    if values["WECHAT_ENCODING_AES_KEY"] and not values["WECHAT_APP_ID"].strip():
        raise SettingsError("WECHAT_APP_ID: required when WECHAT_ENCODING_AES_KEY is set (encrypted pushes "
                            "are checked against the official account's AppID)")
    # Empty means "generate one" (development); blanks would be used as the key itself.
    if values["SECRET_KEY"] and not values["SECRET_KEY"].strip():
        raise SettingsError("SECRET_KEY: only whitespace; leave it empty (development only) or set a real key")
    # Every push and the URL check (GET echostr) are signed with the token; an
    # empty one is a signature anybody can compute, in any environment.
    if not values["WECHAT_TOKEN"].strip():
        raise SettingsError("WECHAT_TOKEN: must not be empty (the token set on the official account's "
                            "server configuration page)")
    if values["APP_ENV"] == "production":
        for name in ("SECRET_KEY", "WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN"):
            if not values[name].strip() or values[name].startswith("dev-") or values[name] == "wx-dev-app":
                raise SettingsError(f"{name}: must be set to a real value when APP_ENV=production")
    for name in ("PHOTO_CHECKLIST",):
        if not values[name]:
            raise SettingsError(f"{name}: needs at least one item")
    unknown = [item for item in values["PHOTO_CHECKLIST_B"] if item not in values["PHOTO_CHECKLIST"]]
    if unknown:
        raise SettingsError(f"PHOTO_CHECKLIST_B: {', '.join(unknown)} not in PHOTO_CHECKLIST "
                            f"({', '.join(values['PHOTO_CHECKLIST'])})")
    if len(values["PHOTO_CHECKLIST_B"]) == len(values["PHOTO_CHECKLIST"]):
        raise SettingsError("PHOTO_CHECKLIST_B: leaves the reporter no photo to take; list only the other "
                            "party's items")
    if values["SMS_ENDPOINT_URL"]:
        _check_http_url("SMS_ENDPOINT_URL", values["SMS_ENDPOINT_URL"], example="https://sms.tencentcloudapi.com",
                        path_allowed=False)


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
        elif self.above is not None and self.maximum is not None:
            text = f"more than {self.above} and at most {self.maximum}"
        elif self.maximum is not None:
            text = f"at most {self.maximum}"
        elif self.above is not None:
            text = f"more than {self.above}"
        else:
            text = f"at least {self.minimum}"
        return f"{text} ({self.why})" if self.why else text


def number_ranges() -> dict[str, NumberRange]:
    """The accepted range of every numeric setting (a test checks none is missing or unbounded).

    Upper bounds keep a typo (an extra zero, a paste of the wrong value) from
    overflowing a date computation in a job that then fails on every run.
    """
    day = 24 * 3600
    week_minutes = 7 * 24 * 60
    mib = 2**20
    return {
        "PRESIGNED_URL_SECONDS": NumberRange(1, 7 * day, why="S3 refuses links valid for over 7 days"),
        "WECHAT_API_TIMEOUT_SECONDS": NumberRange(above=0, maximum=300),
        "WECHAT_MAX_BODY_BYTES": NumberRange(1, 16 * mib, why="WeChat pushes are a few kilobytes"),
        "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": NumberRange(0, day, why="0 turns the check off"),
        "INBOX_LEASE_SECONDS": NumberRange(1, day),
        # Retries wait 5 s * 2^(attempt-1) (capped); far above 30 that doubling overflows a timedelta.
        "INBOX_MAX_ATTEMPTS": NumberRange(1, 30),
        "OUTBOX_MAX_ATTEMPTS": NumberRange(1, 30),
        "PHOTO_MAX_BYTES": NumberRange(1, 200 * mib),
        "PHOTO_MIN_SHORT_SIDE": NumberRange(1, 20000),
        "PHOTO_MAX_PIXELS": NumberRange(1, _pillow_pixel_limit(),
                                        why="above it Pillow treats every photo as a decompression bomb"),
        "PHOTO_MAX_CAPTURE_AGE_MINUTES": NumberRange(1, week_minutes, why="7 days"),
        "BOOKING_LEAD_MINUTES": NumberRange(0, week_minutes, why="0 offers slots starting now; at most 7 days"),
        "BOOKING_OFFER_COUNT": NumberRange(1, 9, why="drivers choose an offer with one digit"),
        "BOOKING_NEAREST_STATIONS": NumberRange(1, 100),
        "BOOKING_SEARCH_DAYS": NumberRange(1, 366),
        "REMINDER_MINUTES": NumberRange(1, week_minutes, why="7 days"),
        "DRAFT_EXPIRY_MINUTES": NumberRange(1, week_minutes, why="7 days"),
        "NO_SHOW_GRACE_MINUTES": NumberRange(0, week_minutes, why="0 closes a no-show as soon as the slot ends; "
                                                                  "at most 7 days"),
        "SLOT_GENERATION_DAYS": NumberRange(1, 366),
        "JOIN_QR_EXPIRE_SECONDS": NumberRange(1, 30 * day, why="WeChat's temporary QR codes last 30 days"),
        "RETAKE_DEADLINE_MINUTES": NumberRange(1, week_minutes, why="7 days"),
        "IDEMPOTENCY_KEY_HOURS": NumberRange(1, 30 * 24, why="30 days"),
    }


def _pillow_pixel_limit() -> int:
    """Pillow's decompression-bomb warning level, which photo intake refuses to go above."""
    from PIL import Image  # imported here: only settings validation needs it, not every importer

    return Image.MAX_IMAGE_PIXELS or 89_478_485  # None (check disabled by an importer): Pillow's default


def _check_numbers(values: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> None:
    for name, accepted in number_ranges().items():
        if accepted.refuses(values[name]):
            raise SettingsError(f"{name}: must be {accepted.describe()}, got {values[name]!r}")
    # A photo's pixel count is at least its short side squared: above the cap, every photo is refused.
    side, cap = values["PHOTO_MIN_SHORT_SIDE"], values["PHOTO_MAX_PIXELS"]
    if side**2 > cap:
        # Named after the one the operator changed (PHOTO_MIN_SHORT_SIDE when both or neither were).
        if "PHOTO_MAX_PIXELS" in given and "PHOTO_MIN_SHORT_SIDE" not in given:
            raise SettingsError(f"PHOTO_MAX_PIXELS: {cap} is below PHOTO_MIN_SHORT_SIDE squared ({side}² = "
                                f"{side**2}), so no photo could pass; raise PHOTO_MAX_PIXELS or lower "
                                "PHOTO_MIN_SHORT_SIDE")
        raise SettingsError(f"PHOTO_MIN_SHORT_SIDE: {side} squared ({side**2}) is above PHOTO_MAX_PIXELS ({cap}), "
                            "so no photo could pass; lower PHOTO_MIN_SHORT_SIDE or raise PHOTO_MAX_PIXELS")


def _check_urls(values: dict[str, Any]) -> None:
    try:
        url = make_url(values["DATABASE_URL"])
    except ArgumentError as exc:
        raise SettingsError(f"DATABASE_URL: not a database URL ({values['DATABASE_URL']!r}): {exc}") from exc
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise SettingsError(f"DATABASE_URL: unsupported database {url.get_backend_name()!r}; use sqlite or postgresql")
    # Only the drivers installed with the service; SQLAlchemy maps a bare postgresql:// to psycopg (3).
    if (url.get_backend_name(), url.get_driver_name()) not in SUPPORTED_DRIVERS:
        raise SettingsError(f"DATABASE_URL: unsupported driver {url.drivername!r}; use sqlite:///path or "
                            "postgresql://user@host/db (postgresql+psycopg://)")
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


SUPPORTED_DRIVERS = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}
# botocore's own rule (a DNS label: letters, digits and '-', not all digits), which every AWS
# region (us-east-1, cn-north-1) and every S3-compatible server's region name (MinIO: us-east-1) meets.
S3_REGION_PATTERN = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")


def _check_s3_region(value: str) -> None:
    if not S3_REGION_PATTERN.fullmatch(value):
        raise SettingsError(f"S3_REGION: expected a region name like us-east-1 (letters, digits and '-'; "
                            f"MinIO's default is us-east-1), got {value!r}")


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
    path = data_dir / "secret_key"
    try:
        if not path.exists():
            path.write_text(secrets.token_hex(32), encoding="utf-8")
            path.chmod(0o600)
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SettingsError(f"DATA_DIR: cannot keep the development secret key in {str(path)!r}: {reason}; "
                            "make the directory writable or set SECRET_KEY") from exc
    if not key:
        raise SettingsError(f"DATA_DIR: the development secret key file {str(path)!r} is empty; "
                            "delete it (a new key is made) or set SECRET_KEY")
    return key
