"""Typed settings, read once from ``config/defaults.toml`` and the environment (pydantic-settings).

Every key of the defaults file is also an environment variable name; the
environment wins, and ``create_app(config={...})`` overrides both (tests).
A missing or malformed value stops startup with :class:`SettingsError`
naming the variable, never a stack trace deep inside a request.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import pydantic_settings
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from accident_service import settings_checks as check
from accident_service.messages import catalogue
from accident_service.notice_kinds import MUST_READ, NOTICE_KINDS
from accident_service.settings_checks import NumberRange, SettingRefused

CONFIG_DIR = Path(os.environ.get("ACCIDENT_SERVICE_CONFIG_DIR", Path(__file__).resolve().parent.parent / "config"))
TEMPLATE_PREFIX = "WECHAT_TEMPLATE_"
#: SMS is on when all of these are set, off when none is.
SMS_CREDENTIALS = ("SMS_SDK_APP_ID", "SMS_SECRET_ID", "SMS_SECRET_KEY", "SMS_SIGN_NAME")
SMS_TEMPLATE_PREFIX = "SMS_TEMPLATE_"


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message starts with the variable's name (a line for each setting,
    when several are)."""

    def report(self) -> str:
        """What the operator is shown: ``configuration error: NAME: ...``, a line for each setting."""
        return "\n".join(f"configuration error: {line}" for line in str(self).splitlines())


def _pillow_pixel_limit() -> int:
    """Pillow's decompression-bomb warning level, which photo intake refuses to go above."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS or 89_478_485  # None (check disabled by an importer): Pillow's default


DAY = 24 * 3600
WEEK_MINUTES = 7 * 24 * 60
MIB = 2**20
Flag = Annotated[bool, BeforeValidator(check.flag)]
Items = Annotated[tuple[str, ...], NoDecode, BeforeValidator(check.comma_list)]
Seconds = Annotated[int, NumberRange(1, DAY)]
# Upper bounds keep a typo (an extra zero, a paste of the wrong value) from overflowing a
# date computation in a job that then fails on every run; a test checks every number has one.
Minutes = Annotated[int, NumberRange(1, WEEK_MINUTES, why="7 days")]
Days = Annotated[int, NumberRange(1, 366)]
# Retries wait 5 s * 2^(attempt-1) (capped); far above 30 that doubling overflows a timedelta.
Attempts = Annotated[int, NumberRange(1, 30)]


class Settings(BaseSettings):
    """Every setting, by its environment variable name; see config/defaults.toml for each one."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, coerce_numbers_to_str=True)

    # Any case, as LOG_FORMAT and the sandbox read it: "Production" refused would be a start-up error for a typo of
    # case, and read as not production it would start on development values.
    APP_ENV: Annotated[Literal["development", "production", "test"], BeforeValidator(check.lower_case)]
    DATA_DIR: Annotated[str, AfterValidator(check.data_dir)]
    DATABASE_URL: str
    DATABASE_ANSWER_TIMEOUT_SECONDS: Annotated[float, NumberRange(above=0, maximum=3600, why="an hour")]
    AUTO_MIGRATE: Flag
    SECRET_KEY: str
    STORAGE_URL: str
    S3_ENDPOINT_URL: Annotated[str, AfterValidator(check.optional(check.http_url, example="http://minio:9000"))]
    S3_REGION: Annotated[str, AfterValidator(functools.partial(check.region, example="us-east-1, MinIO's default"))]
    S3_CREATE_BUCKET: Flag
    PRESIGNED_URL_SECONDS: Annotated[int, NumberRange(1, 7 * DAY, why="S3 refuses links valid for over 7 days")]
    LOG_LEVEL: Annotated[str, AfterValidator(check.log_level)]
    LOG_FORMAT: Annotated[Literal["text", "json"], BeforeValidator(check.lower_case)]
    WECHAT_APP_ID: str
    WECHAT_APP_SECRET: str
    WECHAT_TOKEN: str
    WECHAT_ENCODING_AES_KEY: str
    WECHAT_API_BASE_URL: Annotated[str, AfterValidator(check.api_base_url)]
    WECHAT_API_TIMEOUT_SECONDS: Annotated[float, NumberRange(above=0, maximum=300)]
    WECHAT_MAX_BODY_BYTES: Annotated[int, NumberRange(1, 16 * MIB, why="WeChat pushes are a few kilobytes")]
    WECHAT_TIMESTAMP_TOLERANCE_SECONDS: Annotated[int, NumberRange(0, DAY, why="0 turns the check off")]
    WECHAT_REQUIRE_ENCRYPTION: Flag
    REDIS_URL: Annotated[str, AfterValidator(check.optional(check.redis_url))]
    INBOX_LEASE_SECONDS: Seconds
    INBOX_MAX_ATTEMPTS: Attempts
    INBOX_PROCESS_INLINE: Flag
    OUTBOX_MAX_ATTEMPTS: Attempts
    PHOTO_MAX_BYTES: Annotated[int, NumberRange(1, 200 * MIB)]
    PHOTO_MIN_SHORT_SIDE: Annotated[int, NumberRange(1, 20000)]
    PHOTO_MAX_PIXELS: Annotated[int, NumberRange(1, _pillow_pixel_limit(),
                                                 why="above it Pillow treats every photo as a decompression bomb")]
    PHOTO_MAX_CAPTURE_AGE_MINUTES: Minutes
    PHOTO_CHECKLIST: Annotated[Items, AfterValidator(check.not_empty)]
    PHOTO_CHECKLIST_B: Items
    BOOKING_LEAD_MINUTES: Annotated[int, NumberRange(0, WEEK_MINUTES, why="0 offers slots starting now; "
                                                                          "at most 7 days")]
    BOOKING_OFFER_COUNT: Annotated[int, NumberRange(1, 9, why="drivers choose an offer with one digit")]
    BOOKING_NEAREST_STATIONS: Annotated[int, NumberRange(1, 100)]
    BOOKING_SEARCH_DAYS: Days
    REMINDER_MINUTES: Minutes
    DRAFT_EXPIRY_MINUTES: Minutes
    NO_SHOW_GRACE_MINUTES: Annotated[int, NumberRange(0, WEEK_MINUTES, why="0 closes a no-show as soon as the slot "
                                                                           "ends; at most 7 days")]
    SLOT_GENERATION_DAYS: Days
    JOIN_QR_EXPIRE_SECONDS: Annotated[int, NumberRange(1, 30 * DAY, why="WeChat's temporary QR codes last 30 days")]
    RETAKE_DEADLINE_MINUTES: Minutes
    RETENTION_DAYS: Annotated[int, NumberRange(1, 3650, why="10 years")]
    METRICS_TOKEN: str
    SCHEDULER_METRICS_PORT: Annotated[int, NumberRange(0, 65535, why="0 serves no metrics")]
    WECHAT_MEDIA_PER_MINUTE: Annotated[int, NumberRange(0, 10000, why="0 sets no limit")]
    WECHAT_MEDIA_PER_HOUR: Annotated[int, NumberRange(0, 100000, why="0 sets no limit")]
    IDEMPOTENCY_KEY_HOURS: Annotated[int, NumberRange(1, 30 * 24, why="30 days")]
    DESK_SESSION_IDLE_MINUTES: Annotated[int, NumberRange(1, 24 * 60, why="a day")]
    DESK_LOGIN_MAX_FAILURES: Annotated[int, NumberRange(1, 100)]
    DESK_LOGIN_MAX_FAILURES_PER_IP: Annotated[int, NumberRange(1, 10000)]
    TRUSTED_PROXIES: Annotated[int, NumberRange(0, 10, why="0: the app is reached directly")]
    DESK_LOGIN_LOCKOUT_MINUTES: Annotated[int, NumberRange(1, 24 * 60, why="a day")]
    DESK_QUEUE_REFRESH_SECONDS: Annotated[int, NumberRange(1, 300)]
    SMS_SDK_APP_ID: str
    SMS_SECRET_ID: str
    SMS_SECRET_KEY: str
    SMS_SIGN_NAME: str
    SMS_REGION: Annotated[str, AfterValidator(functools.partial(check.region, example="ap-guangzhou"))]
    SMS_ENDPOINT_URL: Annotated[str, AfterValidator(functools.partial(check.http_url,
                                                                      example="https://sms.tencentcloudapi.com"))]
    SMS_PARAM_MAX_CHARS: Annotated[int, NumberRange(6, 500, why="a notice's parameters have up to 6 characters; a "
                                                                 "whole SMS at most 500")]
    # Filled from the WECHAT_TEMPLATE_<KIND> and SMS_TEMPLATE_<KIND> variables, keyed by kind in lower case.
    templates: Mapping[str, str] = Field(default_factory=dict)
    sms_templates: Mapping[str, str] = Field(default_factory=dict)

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
        return all(getattr(self, name) for name in SMS_CREDENTIALS)

    # -- where values come from -------------------------------------------------

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then the environment, then the defaults file; no .env or secrets files."""
        return (init_settings, _Environment(settings_cls, _loading().environ),
                TomlConfigSettingsSource(settings_cls, toml_file=CONFIG_DIR / "defaults.toml"))

    @model_validator(mode="before")
    @classmethod
    def _collect_templates(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = {**values, "templates": _prefixed(values, TEMPLATE_PREFIX, NOTICE_KINDS),
                      "sms_templates": _sms_template_ids(_prefixed(values, SMS_TEMPLATE_PREFIX, sorted(MUST_READ)))}
        return values

    # -- single values, in field order: a check may read the fields declared before it ------

    @field_validator("DATABASE_URL", "STORAGE_URL")
    @classmethod
    def _expand_data_dir(cls, value: str, info: ValidationInfo) -> str:
        if "DATA_DIR" in info.data:
            value = value.replace("{data_dir}", info.data["DATA_DIR"])
        return check.database_url(value) if info.field_name == "DATABASE_URL" else check.storage_url(value)

    @field_validator("DATABASE_URL")
    @classmethod
    def _check_production_database(cls, value: str, info: ValidationInfo) -> str:
        # The image's DATA_DIR is inside its container: the default SQLite file would go with the container, and
        # every instance would keep cases of its own. An sqlite:// URL set on purpose is the operator's choice.
        if (info.data.get("APP_ENV") == "production" and value.startswith("sqlite")
                and "DATABASE_URL" not in _loading().given):
            raise ValueError("must be set when APP_ENV=production: the default is an SQLite file in DATA_DIR, for "
                             "one process on one machine; production runs on PostgreSQL "
                             "(postgresql+psycopg://user:password@host/database)")
        return value

    @field_validator("SECRET_KEY")
    @classmethod
    def _check_secret_key(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("APP_ENV") == "production":
            return check.production_secret_key(value)
        # Empty means "generate one" (development); blanks would be used as the key itself.
        if value and not value.strip():
            raise ValueError("only whitespace; leave it empty (development only) or set a real key")
        return value

    @field_validator("WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN")
    @classmethod
    def _check_wechat_credential(cls, value: str, info: ValidationInfo) -> str:
        # Every push and the URL check (GET echostr) are signed with the token; an
        # empty one is a signature anybody can compute, in any environment.
        if info.field_name == "WECHAT_TOKEN" and not value.strip():
            raise ValueError("must not be empty (the token set on the official account's server configuration page)")
        if info.data.get("APP_ENV") == "production" and (
                not value.strip() or value.startswith("dev-") or value == "wx-dev-app"):
            raise ValueError("must be set to a real value when APP_ENV=production")
        return value

    @field_validator("WECHAT_API_BASE_URL")
    @classmethod
    def _check_api_over_tls(cls, value: str, info: ValidationInfo) -> str:
        # Every call carries the access token in its query, and the token call the AppSecret.
        if info.data.get("APP_ENV") == "production" and not value.lower().startswith("https://"):
            raise ValueError("must be https:// when APP_ENV=production (every call carries the access token)")
        return value

    @field_validator("SMS_SIGN_NAME")
    @classmethod
    def _check_sms_all_or_none(cls, value: str, info: ValidationInfo) -> str:
        # Half of it set leaves SMS off without a word, and a must-read notice no text can carry waiting for the person.
        # SignName is the approved sign's text; Tencent adds the 【】 itself (README, "SMS"): with them, no sign.
        if "【" in value or "】" in value:
            raise ValueError(f"give the sign without 【】 (Tencent adds them): {value.strip('【】 ')}")
        four = {name: info.data.get(name, "") for name in SMS_CREDENTIALS[:-1]} | {"SMS_SIGN_NAME": value}
        missing = [name for name, given in four.items() if not str(given).strip()]
        if missing and len(missing) < len(four):
            given = [name for name in four if name not in missing]
            raise SettingRefused(missing[0], f"empty while {', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                                             f"set: SMS needs all of "
                                             f"{', '.join(four)} (or none: SMS off)")
        return value

    @field_validator("WECHAT_ENCODING_AES_KEY")
    @classmethod
    def _check_aes_key(cls, value: str, info: ValidationInfo) -> str:
        check.aes_key(value)
        # Encrypted pushes carry the AppID, which decryption checks: without it every one of them fails.
        if value and "WECHAT_APP_ID" in info.data and not info.data["WECHAT_APP_ID"].strip():
            raise SettingRefused("WECHAT_APP_ID", "required when WECHAT_ENCODING_AES_KEY is set (encrypted pushes "
                                                  "are checked against the official account's AppID)")
        return value

    @field_validator("METRICS_TOKEN")
    @classmethod
    def _check_metrics_token(cls, value: str, info: ValidationInfo) -> str:
        # Sent in a header by the scraper: a space in it would be cut there, a blank would be no token at all.
        if any(char.isspace() for char in value) or not value.isprintable() or not value.isascii():
            raise ValueError("printable ASCII without spaces (it goes in an Authorization header); empty: no token")
        # /metrics shares the public webhook's port, so anyone may guess at the token: a short one is no lock.
        if value and info.data.get("APP_ENV") == "production" and len(value) < check.METRICS_TOKEN_MIN_CHARS:
            raise ValueError(f"{len(value)} characters, too short when APP_ENV=production (at least "
                             f"{check.METRICS_TOKEN_MIN_CHARS}); {check.MAKE_A_TOKEN}")
        return value

    @field_validator("PHOTO_CHECKLIST")
    @classmethod
    def _check_checklist_items(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Each item is named to drivers and officers by its text in the catalogue (checklist.<item>): an item without
        # one started, and broke the first message that asked for it.
        named = sorted(key.removeprefix("checklist.") for key in catalogue()
                       if key.startswith("checklist.") and key != "checklist.extra")
        unknown = [item for item in value if item not in named]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: no such photo item; the items are {', '.join(named)}")
        return value

    @field_validator("PHOTO_CHECKLIST_B")
    @classmethod
    def _check_checklist_b(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        checklist = info.data.get("PHOTO_CHECKLIST")
        if checklist is None:
            return value
        unknown = [item for item in value if item not in checklist]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not in PHOTO_CHECKLIST ({', '.join(checklist)})")
        if len(value) == len(checklist):
            raise ValueError("leaves the reporter no photo to take; list only the other party's items")
        return value

    # -- across values --------------------------------------------------------------

    @model_validator(mode="after")
    def _check_photo_sizes(self) -> Settings:
        """A photo's pixel count is at least its short side squared: above the cap, every photo is refused."""
        side, cap = self.PHOTO_MIN_SHORT_SIDE, self.PHOTO_MAX_PIXELS
        if side**2 <= cap:
            return self
        given = _loading().given
        # Named after the one the operator changed (PHOTO_MIN_SHORT_SIDE when both or neither were).
        if "PHOTO_MAX_PIXELS" in given and "PHOTO_MIN_SHORT_SIDE" not in given:
            raise SettingRefused("PHOTO_MAX_PIXELS", f"{cap} is below PHOTO_MIN_SHORT_SIDE squared ({side}² = "
                                                     f"{side**2}), so no photo could pass; raise PHOTO_MAX_PIXELS or "
                                                     "lower PHOTO_MIN_SHORT_SIDE")
        raise SettingRefused("PHOTO_MIN_SHORT_SIDE", f"{side} squared ({side**2}) is above PHOTO_MAX_PIXELS ({cap}), "
                                                     "so no photo could pass; lower PHOTO_MIN_SHORT_SIDE or raise "
                                                     "PHOTO_MAX_PIXELS")


    @model_validator(mode="after")
    def _check_sms_templates_need_sms(self) -> Settings:
        """An SMS template while SMS is off (no credentials) would leave the must-read notices it names without the
        SMS the operator meant them to have, without a word, as half the credentials did (_check_sms_all_or_none)."""
        if self.sms_templates and not self.sms_enabled:
            first = SMS_TEMPLATE_PREFIX + sorted(self.sms_templates)[0].upper()
            raise SettingRefused(first, f"set while SMS is off: SMS needs {', '.join(SMS_CREDENTIALS)} "
                                        f"(or unset every {SMS_TEMPLATE_PREFIX}<KIND>)")
        return self


def number_ranges() -> dict[str, NumberRange]:
    """The accepted range of every numeric setting (a test checks none is missing or unbounded)."""
    return {name: accepted for name, field in Settings.model_fields.items()
            for accepted in field.metadata if isinstance(accepted, NumberRange)}


@dataclass(frozen=True)
class _Loading:
    """What one load_settings call reads: its environment, and the names the operator set (to blame the right one)."""

    environ: Mapping[str, str]
    given: frozenset[str] = frozenset()


_LOADING: ContextVar[_Loading | None] = ContextVar("settings_loading", default=None)


def _loading() -> _Loading:
    """The current load_settings call's inputs; Settings() built directly reads os.environ."""
    return _LOADING.get() or _Loading(os.environ)


class _Environment(EnvSettingsSource):
    """The environment a load_settings call was given (os.environ unless a test passes its own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given_environ = environ
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._given_environ)

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        return {**values, **{name: value for name, value in self.env_vars.items()
                             if name.startswith((TEMPLATE_PREFIX, SMS_TEMPLATE_PREFIX))}}


def _prefixed(values: Mapping[str, Any], prefix: str, kinds: Sequence[str]) -> dict[str, str]:
    """The ``prefix<KIND>`` variables set, by kind; one naming a kind not in ``kinds`` is refused: a typo would quietly
    leave that notice to another channel, and an SMS template for a notice never sent by SMS would never be used
    (acceptance pass: SMS_TEMPLATE_JOINED was accepted)."""
    found = {}
    for name, value in values.items():
        if name.startswith(prefix) and str(value).strip():
            kind = name[len(prefix):].lower()
            if kind not in kinds:
                listed = ", ".join(kind.upper() for kind in kinds)
                if kind in NOTICE_KINDS:
                    raise SettingRefused(name, f"{kind.upper()} notices never go by SMS; only the must-read ones "
                                               f"do: {listed}")
                near = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.75)
                hint = f"; did you mean {prefix}{near[0].upper()}?" if near else ""
                raise SettingRefused(name, f"no notice is of the kind {kind.upper()!r}{hint}; the kinds are {listed}")
            found[kind] = str(value)
    return found


def _sms_template_ids(found: dict[str, str]) -> dict[str, str]:
    """Tencent Cloud's TemplateId is the number the SMS console gives an approved template: anything else (a name,
    the template's text, a WeChat template id pasted into the wrong variable) would be refused at the first must-read
    notice, and that notice left waiting for the person (review: not checked)."""
    for kind, value in found.items():
        if not re.fullmatch(r"[0-9]{1,20}", value):
            raise SettingRefused(SMS_TEMPLATE_PREFIX + kind.upper(),
                                 f"{value!r} is not a template ID: give the number the SMS console shows for the "
                                 "approved template (digits only, e.g. 1234567)")
    return found


#: The counts gunicorn takes from the environment, and their defaults (README, Configuration).
PROCESS_COUNT_DEFAULTS = {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"}
#: Upper bounds, as every number setting has one: a typo with extra zeros forked workers until the machine and the
#: database's connections ran out (an acceptance pass: 385 workers, "too many clients" for everyone else). Far
#: above any sizing in the README (gunicorn suggests 2 × cores + 1 workers).
PROCESS_COUNT_RANGES = {"WEB_CONCURRENCY": NumberRange(1, 128), "GUNICORN_THREADS": NumberRange(1, 256)}


def process_count(name: str, *, environ: Mapping[str, str] | None = None) -> int:
    """A count of processes or threads gunicorn takes from the environment (WEB_CONCURRENCY, GUNICORN_THREADS):
    a whole number in its range (:data:`PROCESS_COUNT_RANGES`); raises SettingsError naming the variable.
    Not a setting: gunicorn reads them (config/gunicorn.conf.py, and gunicorn itself WEB_CONCURRENCY), the service
    never does."""
    raw = (os.environ if environ is None else environ).get(name, PROCESS_COUNT_DEFAULTS[name])
    value = int(raw) if check.WHOLE_NUMBER.fullmatch(raw.strip()) else 0  # as every whole-number setting is written
    accepted = PROCESS_COUNT_RANGES[name]
    if accepted.refuses(value):
        raise SettingsError(f"{name}: expected a whole number {accepted.describe()}, got {raw!r}")
    return value


def metrics_dir(*, environ: Mapping[str, str] | None = None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when set: a directory this process can write its metrics' files in; raises
    SettingsError naming the variable otherwise. Not a setting: prometheus_client reads it, as it is imported, and
    fails on the first count written into a directory that is not there (a traceback, a worker that never boots)."""
    path = (os.environ if environ is None else environ).get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return None
    if not os.path.isdir(path):
        raise SettingsError(f"PROMETHEUS_MULTIPROC_DIR: not a directory: {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"PROMETHEUS_MULTIPROC_DIR: not writable by this user: {path}")
    return path


def bind_address(value: str, *, tcp_only: bool = False) -> str:
    """A gunicorn address as ``BIND`` (or ``serve --bind``) gives it: ``HOST:PORT`` with a port gunicorn can listen
    on, a host alone (port 8000), or ``unix:PATH`` / ``fd://N`` as gunicorn takes them (not with ``tcp_only``: the
    sandbox's server); raises SettingsError naming BIND otherwise (gunicorn's own answer to a port out of range is a
    traceback)."""
    sockets = "" if tcp_only else " (or unix:PATH)"
    if value.startswith(("unix:", "fd://")):
        if tcp_only:
            raise SettingsError(f"BIND: expected HOST:PORT (this server listens on TCP only), got {value!r}")
        return value
    if (value and ":" not in value) or value.endswith("]"):
        return value
    host, _colon, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host.strip("[]"):
        raise SettingsError(f"BIND: expected HOST:PORT with a port from 0 to 65535{sockets}, got {value!r}")
    return value


@dataclass(frozen=True)
class ServingEnvironment:
    """What gunicorn serves the service with: the settings, and the variables gunicorn and prometheus_client read."""

    settings: Settings
    bind: str
    workers: int
    threads: int
    metrics_dir: str | None


def serving_environment(bind: str) -> ServingEnvironment:
    """The settings, ``bind`` (BIND or ``serve --bind``), WEB_CONCURRENCY, GUNICORN_THREADS and
    PROMETHEUS_MULTIPROC_DIR, checked together (config/gunicorn.conf.py, ``accident-service serve``): raises one
    SettingsError naming each mistake, a line each, so an environment file with several is fixed in one go."""
    checks = {"settings": load_settings, "bind": lambda: bind_address(bind),
              "workers": lambda: process_count("WEB_CONCURRENCY"), "threads": lambda: process_count("GUNICORN_THREADS"),
              "metrics_dir": metrics_dir}
    found, problems = {}, []
    for name, value_of in checks.items():
        try:
            found[name] = value_of()
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("\n".join(problems))
    return ServingEnvironment(**found)


def load_settings(overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, the environment and ``overrides`` (highest).

    Raises SettingsError naming the variable for anything missing or malformed.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    if not (CONFIG_DIR / "defaults.toml").is_file():  # read as empty, it would blame the first setting it holds
        raise SettingsError(f"ACCIDENT_SERVICE_CONFIG_DIR: no defaults.toml in {CONFIG_DIR}")
    fields = Settings.model_fields
    given = frozenset(name for name in (*environ, *overrides) if name in fields)
    misspelt = _misspelt(environ)
    environ = {**environ, **{name: environ[name].strip() for name in _padded(environ)}}
    token = _LOADING.set(_Loading(environ, given))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = check.describe_problems(exc, CONFIG_DIR / "defaults.toml")
        raise SettingsError("\n".join([*misspelt, problems])) from None
    except pydantic_settings.SettingsError as exc:  # a source could not be read (the defaults file, a value)
        raise SettingsError(f"{CONFIG_DIR / 'defaults.toml'}: {exc.__cause__ or exc}") from exc
    except (tomllib.TOMLDecodeError, OSError) as exc:  # the defaults file itself: an operator's copy of it
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"ACCIDENT_SERVICE_CONFIG_DIR: {CONFIG_DIR / 'defaults.toml'}: {reason}") from None
    finally:
        _LOADING.reset(token)
    if misspelt:
        raise SettingsError("\n".join(misspelt))
    try:
        check.make_data_dir(settings.DATA_DIR)
    except ValueError as exc:
        raise SettingsError(f"DATA_DIR: {exc}") from None
    if not settings.SECRET_KEY:
        settings = settings.model_copy(update={"SECRET_KEY": _development_secret(Path(settings.DATA_DIR))})
    return settings


#: What the service reads from the environment besides its settings (README: Configuration, Commands, Deployment).
OTHER_VARIABLES = frozenset({"BIND", "STAFF_PASSWORD", "PROMETHEUS_MULTIPROC_DIR", "ACCIDENT_SERVICE_CONFIG_DIR",
                             *PROCESS_COUNT_DEFAULTS})


def _misspelt(environ: Mapping[str, str]) -> list[str]:
    """A line for each variable that is not one the service reads but nearly is, with the same first word
    (``LOG_FROMAT``, ``WECHAT_APPID``): it was ignored, and the setting it meant kept its default (operator acceptance
    pass). Another program's variables (``TEST_DATABASE_URL``, ``HOSTNAME``) start with a word of their own."""
    known = {*Settings.model_fields, *OTHER_VARIABLES}
    lines = []
    for name in sorted(environ):
        first = name.split("_", 1)[0]
        if name in known or name.startswith((TEMPLATE_PREFIX, SMS_TEMPLATE_PREFIX)):
            continue
        near = difflib.get_close_matches(name, [k for k in known if k.split("_", 1)[0] == first], n=1, cutoff=0.8)
        if near:
            lines.append(f"{name}: not a setting; did you mean {near[0]}?")
    return lines


def _padded(environ: Mapping[str, str]) -> list[str]:
    """The settings given with spaces or a line break around their value (pasted, or an env file's ``NAME= x``), to
    be read without them, as the numbers, words and lists always were. Each URL's parser treated them its own way
    (review): a database file or a bucket named with a trailing space, a Redis URL whose database "is not a number".
    Not SECRET_KEY: production refuses a key pasted so, as the key in use would not be the one written down."""
    names = {*Settings.model_fields} - {"SECRET_KEY"}
    return [name for name in environ
            if (name in names or name.startswith((TEMPLATE_PREFIX, SMS_TEMPLATE_PREFIX)))
            and environ[name] != environ[name].strip()]


def _development_secret(data_dir: Path) -> str:
    """The development key kept in DATA_DIR, or SettingsError naming DATA_DIR when it cannot be kept there."""
    try:
        return check.development_secret(data_dir)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SettingsError(f"DATA_DIR: cannot keep the development secret key in "
                            f"{str(data_dir / 'secret_key')!r}: {reason}; make the directory writable or set "
                            "SECRET_KEY") from exc
    except ValueError as exc:
        raise SettingsError(f"DATA_DIR: {exc}") from exc
