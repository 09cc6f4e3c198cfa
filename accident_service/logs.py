"""Logging setup: text or JSON lines, a request (or job) id on each, personal data masked in all.

Masking happens in the formatters, on the whole line they produce: the
message, the formatted exception and the stack. A database error's traceback
quotes the statement's parameters (an openid, the raw push XML, a notice with
a phone number), so masking only the message is not enough.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, unquote

from pythonjsonlogger.json import JsonFormatter

# An 11-digit mainland mobile, also written +86 138 0013 8000, 0086-138-0013-8000 or 8613800138000, and in
# full-width digits (１３８…), as a phone's Chinese keyboard may type them.
_DIGIT = "[0-9０-９]"
_PHONE = re.compile(rf"(?<!\d)((?:\+|00)?86[\s-]?)?([1１][3-9３-９]{_DIGIT})[\s-]?{_DIGIT}{{4}}[\s-]?({_DIGIT}{{4}})"
                    r"(?!\d)")
# A plate: province (or its JSON escape, as in a serialised payload quoted by a database error), region
# letter, then 5 (6 for new-energy plates) letters and digits, the last possibly 学/警/挂/港/澳; in any case.
# A space or a dot may come after the region letter, or after the province when a digit follows within
# the plate's first characters (粤 B12345): without that digit, "更新 status" would read as one. A "+" too: a
# space as a form sends it in a URL's query (粤+B12345).
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使"
_PLATE = re.compile(rf"((?:[{_PROVINCES}]|\\u[0-9a-fA-F]{{4}})(?:[A-Za-z]|[\s·.+-][A-Za-z]"
                    r"(?=[\s·.+-]?[A-Za-z]{0,4}\d)))[\s·.+-]?[A-Za-z0-9]{3,5}([A-Za-z0-9学警挂港澳领])(?![A-Za-z0-9])")
# An openid: "o" and 27 more URL-safe characters (24 or more are taken, to catch other shapes too), also
# glued to a word by "_" or "-" (user_o...) or after a URL-encoded character (openid%3Do...); a long
# identifier starting so is masked as well, harmlessly.
_OPENID = re.compile(r"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{2}))(o[A-Za-z0-9_-]{3})[A-Za-z0-9_-]{20,}")
_PERCENT_ENCODED = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
#: Credentials masked by value wherever a line quotes them, in any form (a URL's query, a JSON body, a database
#: error's parameters, positional on SQLite): the app secret, and the latest access tokens as this process got
#: them (a token lives two hours; a few cover rotation and a forced refresh).
_NEVER_LOGGED_SECRETS: set[str] = set()
_NEVER_LOGGED_TOKENS: collections.deque[str] = collections.deque(maxlen=8)
_SHORTEST_MASKED = 8  # a shorter value (a test's "secret") would mask ordinary words

TEXT_FORMAT = "{asctime} {levelname} {name} [{request_id}] {message}"
_LOG_CONTEXT: ContextVar[str | None] = ContextVar("log_context", default=None)


def mask_personal_data(text: str) -> str:
    """Mask mobile numbers, plates and openids, keeping enough to correlate lines; and, whole, the credentials
    given to :func:`never_log` (first: a token's digits must not be taken for a phone number's).

    A line may quote text in another form than it was typed, where a plate's province character hides: a URL as
    it was sent, percent-encoded (``%E7%B2%A4A12345``: gunicorn's DEBUG line of each request), or bytes read as
    Latin-1 (``ç²¤A12345``: gunicorn's line refusing a request line sent in raw UTF-8). When decoding such a line
    shows something to mask, it is logged decoded, masked."""
    masked = _masked(text)
    decoded = masked
    for runs, decoded_run in _ENCODED_RUNS:  # each form decoded: a line may hold both
        if runs.search(decoded):
            decoded = runs.sub(decoded_run, decoded)
    if decoded != masked:
        decoded_masked = _masked(decoded)
        if decoded_masked != decoded:
            return decoded_masked
    return masked


def _printable(decoded: str) -> str:
    """Each character that does not print encoded again: a newline decoded would let a request's path write a line
    of its own into the log, and one beside a plate must not keep the plate from being masked (review)."""
    return "".join(character if character.isprintable() else quote(character) for character in decoded)


def _percent_decoded(run: re.Match[str]) -> str:
    """A run of percent-encoded bytes decoded where it is UTF-8 text; bytes that are not are left as they came."""
    try:
        return _printable(unquote(run.group(), errors="strict"))
    except UnicodeDecodeError:
        return run.group()


def _latin1_decoded(run: re.Match[str]) -> str:
    """A run of characters U+0080-U+00FF read again as the UTF-8 bytes they were; a run that is not is left. gunicorn
    quotes the line with ``%r``, which writes those that do not print (U+0080-U+00A0, U+00AD) as an escape
    (``\\x8b``): such an escape is one of the run's characters too (review: 苏 is ``è\\x8b\\x8f``)."""
    try:
        raw = _LATIN1_ESCAPE.sub(lambda escape: chr(int(escape.group(1), 16)), run.group())
        return _printable(raw.encode("latin-1").decode("utf-8"))
    except UnicodeDecodeError:
        return run.group()


_LATIN1_ESCAPE = re.compile(r"\\x([89a][0-9a-f]|ad)")
_ENCODED_RUNS = ((_PERCENT_ENCODED, _percent_decoded),
                 (re.compile(r"(?:[\x80-\xff]|\\x(?:[89a][0-9a-f]|ad))+"), _latin1_decoded))


def _masked(text: str) -> str:
    for value in (*_NEVER_LOGGED_SECRETS, *_NEVER_LOGGED_TOKENS):
        if value in text:
            text = text.replace(value, "***")
    text = _PHONE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(3)}", text)
    text = _PLATE.sub(r"\1***\2", text)
    return _OPENID.sub(r"\1***", text)


def never_log(value: str, *, token: bool = False) -> None:
    """Mask ``value`` in every line logged from now on: a secret for good, a ``token`` while it is one of the
    latest few. urllib3's DEBUG lines quote each call's URL (``?access_token=…``), and a database error quotes
    the token being stored."""
    if len(value) < _SHORTEST_MASKED:
        return
    if not token:
        _NEVER_LOGGED_SECRETS.add(value)
    elif value not in _NEVER_LOGGED_TOKENS:
        _NEVER_LOGGED_TOKENS.append(value)


@contextlib.contextmanager
def log_context(request_id: str | None) -> Iterator[None]:
    """Put ``request_id`` (a web request's id, a job's name and run) on every line logged inside."""
    token = _LOG_CONTEXT.set(request_id)
    try:
        yield
    finally:
        _LOG_CONTEXT.reset(token)


def current_request_id() -> str | None:
    return _LOG_CONTEXT.get()


def set_request_id(request_id: str | None) -> Any:
    """Set the id for what follows in this context; returns the token for :func:`reset_request_id`."""
    return _LOG_CONTEXT.set(request_id)


def reset_request_id(token: Any) -> None:
    _LOG_CONTEXT.reset(token)


def _with_request_id(record: logging.LogRecord) -> None:
    if getattr(record, "request_id", None) is None:
        record.request_id = current_request_id() or "-"


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class MaskedTextFormatter(logging.Formatter):
    """``time LEVEL logger [request id] message``, then the traceback; personal data masked throughout."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, style="{")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        _with_request_id(record)
        return mask_personal_data(super().format(record))


class MaskedJsonFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, request_id, and exception / stack when any.

    Personal data is masked in the serialised line, so every field is covered,
    whatever a traceback quotes.
    """

    def __init__(self) -> None:
        super().__init__("{asctime}{levelname}{name}{message}{request_id}", style="{", json_ensure_ascii=False,
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                        "exc_info": "exception", "stack_info": "stack"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        _with_request_id(record)
        return mask_personal_data(super().format(record))


FORMATTERS = {"text": MaskedTextFormatter, "json": MaskedJsonFormatter}


class AccessLinePathAsSent(logging.Filter):
    """gunicorn's access line (config/gunicorn.conf.py) with the path as the caller sent it.

    WSGI gives the path with each byte of its UTF-8 a latin-1 character, so a plate in it (``/cases/粤A12345``,
    URL-encoded or not) came out as ``ç²¤A12345``, which the masking cannot read as a plate.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        path = atoms.get("U") if isinstance(atoms, dict) else None
        if path:
            try:
                # A byte that is not UTF-8 becomes U+FFFD: the plate beside it is still read, and masked.
                atoms["U"] = path.encode("latin-1").decode("utf-8", errors="replace")
            except UnicodeEncodeError:
                pass  # not a WSGI string after all: left as it came
        return True


class ServiceLogHandler(logging.StreamHandler):
    """The service's one handler on the root logger (found again when logging is configured anew)."""


def configure_logging(level: str, log_format: str = "text", *, stream: IO[str] | None = None) -> ServiceLogHandler:
    """Send every logger's lines to ``stream`` (stderr) in ``log_format`` ("text" or "json"), masked.

    Called again (another app in the process, a test) it reuses its handler:
    the format and level change, and the stream when one is given.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, ServiceLogHandler)), None)
    if handler is None:
        handler = ServiceLogHandler(stream or sys.stderr)
        root.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setFormatter(FORMATTERS[log_format]())
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warning is a line in the same format, not a stray stderr print
    # Two lines per job run every few seconds drown the service's own lines.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # Alembic narrates every plugin it loads; an upgrade is reported by the command itself.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    return handler
