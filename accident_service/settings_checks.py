"""Checks of single setting values, used by the validators in ``settings.py``.

Each check returns the value to use or raises ValueError with the reason, in
words an operator can act on; ``settings`` puts the variable's name in front.
Nothing here contacts a server: URLs are parsed, not dialled.
"""

from __future__ import annotations

import binascii
import functools
import math
import os
import re
import secrets
import string
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError
from pydantic_core import core_schema
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_DRIVERS = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}
# botocore's own rule (a DNS label: letters, digits and '-', not all digits), which every AWS
# region (us-east-1, cn-north-1) and every S3-compatible server's region name (MinIO: us-east-1) meets.
REGION_PATTERN = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_MAKE_ONE = 'make one with: python -c "import secrets; print(secrets.token_hex({}))"'
MAKE_A_KEY = _MAKE_ONE.format(32)
MAKE_A_TOKEN = _MAKE_ONE.format(16)  # METRICS_TOKEN: 32 hex characters
SECRET_KEY_MIN_CHARS = 32
SECRET_KEY_MIN_DISTINCT = 10
METRICS_TOKEN_MIN_CHARS = 16
# zxcvbn's estimate of the guesses an attacker needs, as a power of ten. Random keys of 32 characters
# or more score above 27 (of 1,500 keys of 32 hex characters the lowest scored 27.5; token_hex(32) scores
# about 60); words, dates, keyboard runs and repeats score below 25 at that length. A phrase of many
# words can score more: the error message and the README say to generate the key.
SECRET_KEY_MIN_GUESSES_LOG10 = 25
# ...and zxcvbn scores an English phrase of 30 or more characters above that (``my-super-secret-key-for-the-
# prod``: 28.7). So a key mostly of dictionary words (3 letters or more, as zxcvbn finds them: any case,
# reversed, l33t) and the separators between them is refused too: such phrases are 0.84 to 1.0 of words,
# token_urlsafe(32) keys at most 0.56 (4,000 measured). In a key of hex digits only, words are read without
# l33t: with it, one random key of 32 in 40,000 scored 0.81; without, the most of 4,000 was 0.28, and
# ``deadbeefcafebabefacadedecade…`` still scores 0.93.
SECRET_KEY_MAX_WORDS_SHARE = 0.8
_HEX_DIGITS = frozenset(string.hexdigits)
# Values found in examples and tutorials; compared in lower case.
WELL_KNOWN_SECRETS = frozenset({"x", "changeme", "change-me", "change_me", "secret", "secret-key", "secret_key",
                                "secretkey", "password", "test", "test-secret-key", "default", "development",
                                "insecure", "please-change-me", "your-secret-key", "supersecret"})


class SettingRefused(ValueError):
    """Raised by a check that blames another setting than the one it validates (``name``)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name


def describe_problems(exc: ValidationError, defaults_file: Path) -> str:
    """``NAME: reason, got 'value'``, a line for each setting pydantic found a problem with, in field order: an
    operator fixing an environment file sees all of them at once, not one a restart."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        line = _describe(error, defaults_file)
        lines.setdefault(line.partition(":")[0], line)
    return "\n".join(lines.values())


def _describe(error, defaults_file: Path) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingRefused):
        return f"{cause.name}: {cause}"
    name = str(error["loc"][0]) if error["loc"] else "settings"
    if error["type"] == "missing":
        return f"{name}: not set and no default in {defaults_file}"
    if isinstance(cause, ValueError):
        return f"{name}: {cause}"
    expected = _EXPECTED.get(error["type"]) or error["msg"].removeprefix("Input should be ")
    if error["type"] == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "")
    return f"{name}: expected {expected}, got {error['input']!r}"


_EXPECTED = {
    "int_parsing": "a whole number", "int_from_float": "a whole number", "int_type": "a whole number",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false (also 1/0, yes/no, on/off)", "bool_type": "true or false",
}


@dataclass(frozen=True)
class NumberRange:
    """The values a numeric setting accepts: ``minimum`` and ``maximum`` included.

    ``above`` instead of ``minimum`` excludes the bound (a float timeout must be
    more than 0, however little). ``why`` is shown to the operator. Used as
    ``Annotated[int, NumberRange(...)]`` on a field, which it then validates.
    """

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    why: str = ""

    def refuses(self, value: float) -> bool:
        # A whole number may be too big for a float (isfinite would raise): only floats can be nan or inf.
        return not ((not isinstance(value, float) or math.isfinite(value))
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

    def _check(self, value: float) -> float:
        if self.refuses(value):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        written = functools.partial(_written_as_number, whole=source is int)
        return core_schema.no_info_after_validator_function(
            self._check, core_schema.no_info_before_validator_function(written, handler(source)))


# How a number is written in the environment: digits, a sign, for a decimal a point and an exponent. Not what Python's
# int() and float() take besides: "3_0" was read as 30, and "3.0" as a whole number 3 (acceptance pass).
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
DECIMAL_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _written_as_number(value: Any, *, whole: bool) -> Any:
    """``value`` as it came, if it is not text or is text written as a (whole) number; raises ValueError otherwise."""
    if isinstance(value, str) and not (WHOLE_NUMBER if whole else DECIMAL_NUMBER).fullmatch(value.strip()):
        raise ValueError(f"expected {'a whole number' if whole else 'a number'}, got {value!r}")
    return value


def flag(raw: Any) -> Any:
    """Blank means false, as it always has here (``AUTO_MIGRATE=`` in an env file); pydantic parses the rest."""
    if isinstance(raw, str):
        return raw.strip() or False
    return raw


def comma_list(raw: Any) -> tuple[str, ...]:
    """Items separated by commas, each stripped; an empty list from an empty value. An empty item between two
    others (``scene,,plate_a``) is a slip, named rather than dropped; a trailing comma is forgiven."""
    items = [str(item).strip() for item in (raw if isinstance(raw, list | tuple) else str(raw).split(","))]
    while items and not items[-1]:
        items.pop()
    if "" in items:
        raise ValueError(f"item {items.index('') + 1} is empty")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once")
    return tuple(items)


def optional(check: Callable[..., str], **options: Any) -> Callable[[str], str]:
    """``check`` for a setting that may also be left empty (the feature is then off)."""
    return lambda value: check(value, **options) if value else value


def lower_case(raw: Any) -> Any:
    return raw.strip().lower() if isinstance(raw, str) else raw


def not_empty(items: tuple[str, ...]) -> tuple[str, ...]:
    if not items:
        raise ValueError("needs at least one item")
    return items


def log_level(value: str) -> str:
    if value.strip().upper() not in LOG_LEVELS:  # "info" works too
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.strip().upper()


def api_base_url(value: str) -> str:
    http_url(value, example="https://api.weixin.qq.com/cgi-bin/", path_allowed=True)
    if not value.endswith("/"):
        raise ValueError("must end with '/' (like https://api.weixin.qq.com/cgi-bin/)")
    return value


def data_dir(value: str) -> str:
    """DATA_DIR names a directory (one that exists, or a path that is nothing yet): made by :func:`make_data_dir`
    once every setting has passed, so a refused setting leaves nothing behind."""
    if not value.strip():
        # An empty DATA_DIR would put sqlite:///{data_dir}/... and file://{data_dir}/... at the filesystem root.
        raise ValueError("must not be empty (a directory for the SQLite file, photos and the "
                         "development secret key, like ./var)")
    if "\x00" in value:
        raise ValueError(f"contains a NUL character: {value!r}")
    return value


def make_data_dir(value: str) -> None:
    """DATA_DIR exists (created if missing) and is a directory; ValueError with the OS's reason otherwise.

    Made even when nothing is kept there yet, so a typo stops startup here,
    not at the first photo or the first SQLite connection.
    """
    shown = value if len(value) <= 200 else value[:200] + "..."
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise ValueError(f"{shown!r} exists and is not a directory") from exc
    except OSError as exc:  # a file on the way (Not a directory), permissions, a name too long, ...
        raise ValueError(f"cannot create the directory {shown!r}: {exc.strerror or type(exc).__name__}") from exc


def database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL ({value!r}): {exc}") from exc
    except ValueError:  # SQLAlchemy's int() of the port, whose text would quote only the port
        raise ValueError("its port is not a number; use postgresql://user@host:5432/db") from None
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ValueError(f"unsupported database {url.get_backend_name()!r}; use sqlite or postgresql")
    # Only the drivers installed with the service; SQLAlchemy maps a bare postgresql:// to psycopg (3).
    if (url.get_backend_name(), url.get_driver_name()) not in SUPPORTED_DRIVERS:
        raise ValueError(f"unsupported driver {url.drivername!r}; use sqlite:///path or "
                         "postgresql://user@host/db (postgresql+psycopg://)")
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "postgresql":
        # Without them the driver falls back to the local socket and a database named after the user: a service
        # that migrates at start would build its schema in whatever database that is.
        # libpq's other ways of naming them count: query parameters, a service file entry, its own variables.
        named = set(url.query) | {name for name in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")
                                   if os.environ.get(name)}
        if not (url.host or named & {"host", "hostaddr", "service", "PGHOST", "PGHOSTADDR", "PGSERVICE"}):
            raise ValueError(f"no host in {shown!r}; use postgresql://user@host/db")
        if not (url.database or named & {"dbname", "service", "PGDATABASE", "PGSERVICE"}):
            raise ValueError(f"no database in {shown!r}; use postgresql://user@host/db")
    elif not url.database or _sqlite_in_memory(url):
        raise ValueError(f"no database file in {shown!r}; use sqlite:///path (a database in memory is lost with "
                         "the process, and everything drivers sent with it)")
    return value


def _sqlite_in_memory(url: URL) -> bool:
    """``:memory:``, or its URI forms (``file::memory:?uri=true``, ``file:name?mode=memory&uri=true``)."""
    if url.database == ":memory:":
        return True
    uri = str(url.query.get("uri", "")).lower() in {"true", "1"}
    return uri and (url.query.get("mode") == "memory" or url.database.removeprefix("file:") == ":memory:")


def storage_url(value: str) -> str:
    storage = urlparse(value)
    if storage.scheme not in {"file", "s3"}:
        raise ValueError(f"unknown scheme {storage.scheme!r} in {value!r}; use file:///path or s3://bucket")
    if storage.scheme == "s3" and not storage.netloc:
        raise ValueError(f"no bucket in {value!r}; use s3://bucket[/prefix]")
    # file://./var is relative (urlparse reads "." as the host); file:// and file://localhost name no directory.
    if storage.scheme == "file" and not storage.path.strip("/") and storage.netloc in {"", "localhost"}:
        raise ValueError(f"no directory in {value!r}; use file:///path")
    return value


def http_url(value: str, *, example: str, path_allowed: bool = False) -> str:
    parsed = urlparse(value)  # the errors quote it without a password in it, as redis_url's do
    try:
        parsed.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as exc:
        raise ValueError(f"bad port in {_without_password(value)!r}; expected a URL like {example}") from exc
    extra = (parsed.path not in {"", "/"} and not path_allowed) or parsed.query or parsed.fragment
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or extra:
        shape = "http(s)://host[:port]/path/" if path_allowed else "http(s)://host[:port]"
        raise ValueError(f"expected {shape} (like {example}), got {_without_password(value)!r}")
    return value


def redis_url(value: str) -> str:
    """The shapes redis.Redis.from_url accepts; parsed only, Redis is not contacted at startup."""
    parsed = urlparse(value)
    shown = _without_password(value)  # what the errors quote
    example = "redis://host:6379/0, rediss://host:6380/0 or unix:///run/redis.sock"
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ValueError(f"no socket path in {shown!r}; expected {example}")
        return value
    if parsed.scheme not in {"redis", "rediss"}:
        raise ValueError(f"expected {example}, got {shown!r}")
    try:
        parsed.port  # noqa: B018  (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as exc:
        raise ValueError(f"bad port in {shown!r}; expected {example}") from exc
    if not parsed.hostname:
        raise ValueError(f"no host in {shown!r}; expected {example}")
    database = parsed.path.strip("/")
    if database and not database.isdigit():
        # The whole URL, masked: with a '/' in the password, urlparse's "path" holds the rest of the password.
        raise ValueError(f"the database after the host must be a number, got {shown!r}")
    return value


def _without_password(url: str) -> str:
    """``url`` as error messages quote it: whatever stands between ``user:`` and the last ``@`` shown as ``***``.

    By the characters, not by ``urlparse``: a password with an unescaped ``/``, ``?`` or ``#`` in it (the URLs that
    fail the checks) ends urlparse's host part early, and the password would be quoted whole.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{separator}{userinfo.partition(':')[0]}:***@{host}"


def region(value: str, *, example: str) -> str:
    """A cloud region's name (S3_REGION, SMS_REGION): letters, digits and '-'; never blank."""
    if not REGION_PATTERN.fullmatch(value):
        raise ValueError(f"expected a region name like {example} (letters, digits and '-'), got {value!r}")
    return value


def aes_key(key: str) -> str:
    """EncodingAESKey: 43 base64 characters, the 32-byte AES key without its trailing '='."""
    if not key:
        return key  # plain mode only
    if len(key) != 43:
        raise ValueError(f"must be 43 characters long, got {len(key)}")
    try:
        decoded = b64decode(key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64 (letters, digits, '+' and '/'); copy it again from the official "
                         "account's server configuration page") from exc
    if len(decoded) != 32:
        raise ValueError(f"decodes to {len(decoded)} bytes, expected 32")
    return key


def production_secret_key(key: str) -> str:
    """A production SECRET_KEY signs sessions and storage URLs: it must be long and random.

    Refuses well-known values (``changeme``, ``dev-…``), keys under 32
    characters, keys of few different characters, keys zxcvbn finds
    guessable (words, dates, sequences, repeats), and keys mostly of words.
    """
    if not key.strip():
        raise ValueError(f"must be set when APP_ENV=production; {MAKE_A_KEY}")
    if key != key.strip():  # pasted with a space or a newline: the key in use would not be the one written down
        raise ValueError("has spaces or a line break around it; set the key alone")
    if key.lower() in WELL_KNOWN_SECRETS or key.startswith("dev-"):
        raise ValueError(f"a well-known example value; {MAKE_A_KEY}")
    if len(key) < SECRET_KEY_MIN_CHARS:
        raise ValueError(f"{len(key)} characters, too short (at least {SECRET_KEY_MIN_CHARS}); {MAKE_A_KEY}")
    if len(set(key)) < SECRET_KEY_MIN_DISTINCT:
        raise ValueError(f"only {len(set(key))} different characters, not random; {MAKE_A_KEY}")
    from zxcvbn import zxcvbn  # imported here: only a production start needs it

    # zxcvbn refuses input over 72 characters; the start of a random key is as random as the rest.
    if zxcvbn(key[:72])["guesses_log10"] < SECRET_KEY_MIN_GUESSES_LOG10:
        raise ValueError(f"guessable (words, dates, sequences or repeats), not random; {MAKE_A_KEY}")
    if _share_of_words(key[:72], l33t=not set(key) <= _HEX_DIGITS) >= SECRET_KEY_MAX_WORDS_SHARE:
        raise ValueError(f"mostly words, not random; {MAKE_A_KEY}")
    return key


def _share_of_words(text: str, *, l33t: bool = True) -> float:
    """How much of ``text`` is dictionary words of 3 letters or more (zxcvbn's dictionaries and matching; with
    ``l33t``, its digits-for-letters readings too) and the characters between words that are not letters or
    digits."""
    from zxcvbn.matching import omnimatch

    covered = {at for at, char in enumerate(text) if not char.isalnum()}
    for match in omnimatch(text):
        if match["pattern"] == "dictionary" and len(match["token"]) >= 3 and (l33t or not match.get("l33t")):
            covered.update(range(match["i"], match["j"] + 1))
    return len(covered) / len(text)


def development_secret(data_dir: Path) -> str:
    """A random key kept in the data directory so sessions survive restarts.

    Raises OSError or UnicodeDecodeError when the file cannot be kept, ValueError when it is empty.
    """
    path = data_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32), encoding="utf-8")
        path.chmod(0o600)
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"the development secret key file {str(path)!r} is empty; "
                         "delete it (a new key is made) or set SECRET_KEY")
    return key
