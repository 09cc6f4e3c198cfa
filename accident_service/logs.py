"""Logging setup: text or JSON lines, a request (or job) id on each, personal data masked in all.

Masking happens in the formatters, on the whole line they produce: the
message, the formatted exception and the stack. A database error's traceback
quotes the statement's parameters (an openid, the raw push XML, a notice with
a phone number), so masking only the message is not enough.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote, unquote

from pythonjsonlogger.json import JsonFormatter

from accident_service.plates_and_phones import (
    INVISIBLE,
    PHONE,
    PHONE_SEPARATORS,
    PLATE_SEPARATORS,
    PLATE_SUFFIXES,
    PROVINCES,
    fold,
)

# Plates and mobile numbers are found as the service's parsers read them (plates_and_phones, wechat.parsing), so
# that whatever they accept is masked (acceptance pass: 粤Ａ１２３４５, 粤A·1·2345, 1380 013 8000 and 138\u200b00138000
# parsed, and were logged as they came): on a view of the line with each character NFKC-folded, zero-width
# characters dropped, and the separators a driver may put inside the value dropped too. What is found there is
# masked in the line as written, through each view character's index in the line.
#
# A mobile, with or without a country code: the parsers' PHONE, standing apart from other digits. Written in other
# groups than 138 0013 8000 (1 3 8 0 0 1 3 8 0 0 0, 1380-013-8000), it must be followed by no Latin letter either:
# a UUID's or a token's groups (c0ffee13-8001-3800-0abc) and an access line's byte count beside its duration
# (200 1380013 8000ms) would otherwise read as one. Only a word glued before it may be a label (tel1380 013 8000):
# see _after_a_label.
# The quick look, on the line folded, whether it may hold one: 11 digits, separators between them or not.
_PHONE_GAP = rf"[\s{re.escape(PHONE_SEPARATORS)}]*"
_MOBILE_SPREAD = re.compile(rf"1{_PHONE_GAP}[3-9](?:{_PHONE_GAP}[0-9]){{9}}")
_MOBILE_CANDIDATES = re.compile(r"\+?[0-9]{11,}")  # on the view: a mobile lies within such a run
_MOBILE_LENGTHS = (15, 14, 13, 11)  # with 0086, +86, 86, without
_USUAL_GROUP_STARTS = (set(), {3, 7})  # 13800138000, 138 0013 8000
# A plate: province (or any character's JSON escape, as in a serialised payload quoted by a database error), then
# the region letter and 4 to 6 letters and digits, the last possibly 学/警/挂/港/澳/领; in any case. Wider than the
# parsers' PLATE (I and O, a shorter serial, embassy and consulate plates): a plate they refuse is still someone's.
# Besides the parsers' separators, a "+": a form sends a space in a URL's query as one (粤+B12345). Written with
# separators, a plate must hold 3 digits, as every plate issued does (a serial has at most 2 letters): words after
# a province character ("更新 status 2", "云.Server") would otherwise read as one.
_PROVINCES = PROVINCES + "使"
_PLATE_START = re.compile(rf"[{_PROVINCES}]|\\u[0-9a-fA-F]{{4}}")
_PLATE_REST = re.compile(rf"[A-Z][A-Z0-9]{{3,5}}[A-Z0-9{PLATE_SUFFIXES}领]", re.IGNORECASE)
_PLATE_REST_LENGTHS = (7, 6, 5)  # longest first
_PLATE_VIEW_SEPARATORS = PLATE_SEPARATORS + "+"
_SEPARATED_PLATE_DIGITS = 3
_PLATE_GAP = rf"[\s{re.escape(_PLATE_VIEW_SEPARATORS)}]*"
_PLATE_SPREAD = re.compile(rf"(?:{_PLATE_START.pattern}){_PLATE_GAP}[A-Z](?:{_PLATE_GAP}[A-Z0-9]){{3,5}}{_PLATE_GAP}"
                           rf"[A-Z0-9{PLATE_SUFFIXES}领]", re.IGNORECASE)  # the quick look
# What is left of a folded line once zero-width characters and the separators go, by the separators.
_WRITTEN_RUNS = {separators: re.compile(rf"[^\s{re.escape(separators + INVISIBLE)}]+")
                 for separators in (PHONE_SEPARATORS, _PLATE_VIEW_SEPARATORS)}
_NFKC = functools.partial(unicodedata.normalize, "NFKC")
_ASCII_DIGITS = frozenset("0123456789")
_ASCII_ALPHANUMERICS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_LETTERS = _ASCII_ALPHANUMERICS - _ASCII_DIGITS
_HEX_LETTERS = frozenset("ABCDEFabcdef")
# An openid: "o" and 27 more URL-safe characters (24 or more are taken, to catch other shapes too), also
# glued to a word by "_" or "-" (user_o...) or after a URL-encoded character (openid%3Do...); a long
# identifier starting so is masked as well, harmlessly.
_OPENID = re.compile(r"(?:(?<![A-Za-z0-9])|(?<=%[0-9A-Fa-f]{2}))(o[A-Za-z0-9_-]{3})[A-Za-z0-9_-]{20,}")
_OPENID_SHAPE = re.compile(r"o[A-Za-z0-9_-]{23}")  # without _OPENID's look behind, which is slow to search for
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
    # Quick looks first: this runs on every line, and few hold a mobile number, a province or an openid.
    folded = fold(text)
    if _MOBILE_SPREAD.search(folded):
        text = _phones_masked(text)
    if (not folded.isascii() or "\\u" in folded) and _PLATE_SPREAD.search(folded):
        text = _plates_masked(text)
    if _OPENID_SHAPE.search(text):
        text = _OPENID.sub(r"\1***", text)
    return text


class _View:
    """``text`` as the parsers read it: each character NFKC-folded (one may become several: ⑬ is 13), zero-width
    characters and ``separators`` (with any whitespace) dropped. ``origins[i]`` is the index in ``text`` of the
    character view character ``i`` comes from; ``gaps`` the view positions a separator was dropped before."""

    def __init__(self, text: str, separators: str) -> None:
        # Each character folded alone, so that each folded one is known to come from one written.
        pieces = [text] if text.isascii() else list(map(_NFKC, text))
        folded = "".join(pieces)
        folded_origins = (range(len(text)) if len(folded) == len(text)
                          else [index for index, piece in enumerate(pieces) for _ in piece])
        kept: list[str] = []
        self.origins: list[int] = []
        self.gaps: set[int] = set()
        written = 0
        for run in _WRITTEN_RUNS[separators].finditer(folded):
            if folded[written:run.start()].strip(INVISIBLE):  # not only zero-width characters: a separator
                self.gaps.add(len(self.origins))
            kept.append(run.group())
            self.origins.extend(folded_origins[run.start():run.end()])
            written = run.end()
        if folded[written:].strip(INVISIBLE):
            self.gaps.add(len(self.origins))
        self.text = "".join(kept)

    def apart_before(self, start: int, glued: frozenset[str]) -> bool:
        """Whether view[start] follows no character of ``glued``, or a separator comes between."""
        return start == 0 or start in self.gaps or self.text[start - 1] not in glued

    def apart_after(self, end: int, glued: frozenset[str]) -> bool:
        """Whether view[end - 1] is followed by no character of ``glued``, or a separator comes between."""
        return end == len(self.text) or end in self.gaps or self.text[end] not in glued

    def kept_head(self, start: int, last: int) -> tuple[int, int]:
        """Where view[start:last + 1] is in the text, without a character it shares with view[last + 1] (⑬)."""
        return self.origins[start], min(self.origins[last] + 1, self.origins[last + 1])

    def kept_tail(self, first: int, end: int) -> tuple[int, int]:
        """Where view[first:end] is in the text, without a character it shares with view[first - 1]."""
        return max(self.origins[first], self.origins[first - 1] + 1), self.origins[end - 1] + 1


def _replaced(text: str, replacements: list[tuple[int, int, str]]) -> str:
    """``text`` with each (start, end, replacement), in order and apart, done."""
    pieces, done = [], 0
    for start, end, replacement in replacements:
        pieces += [text[done:start], replacement]
        done = end
    return "".join(pieces) + text[done:]


def _phones_masked(text: str) -> str:
    view = _View(text, PHONE_SEPARATORS)
    replacements = []
    for run in _MOBILE_CANDIDATES.finditer(view.text):
        starts = sorted({run.start(), run.start() + (view.text[run.start()] == "+")}
                        | {gap for gap in view.gaps if run.start() < gap < run.end()})
        searched_from = run.start()
        for start in starts:
            if start < searched_from:
                continue
            for length in _MOBILE_LENGTHS:
                end = start + length
                if end > run.end() or not PHONE.fullmatch(view.text, start, end):
                    continue
                mobile = end - 11
                groups = {gap - mobile for gap in view.gaps if start < gap < end} - {0}  # 0: after +86
                usual = groups in _USUAL_GROUP_STARTS
                glued = _ASCII_DIGITS if usual else _ASCII_ALPHANUMERICS
                if ((view.apart_before(start, glued) or (not usual and _after_a_label(view, start)))
                        and view.apart_after(end, glued)):
                    head_start, head_end = view.kept_head(start, mobile + 2)
                    tail_start, tail_end = view.kept_tail(end - 4, end)
                    replacements.append((head_start, tail_end,
                                         f"{text[head_start:head_end]}****{text[tail_start:tail_end]}"))
                    searched_from = end
                    break
    return _replaced(text, replacements)


def _after_a_label(view: _View, start: int) -> bool:
    """Whether view[start] follows a Latin word glued to it (tel1380 013 8000): 2 to 8 letters standing apart before,
    not all of them hex digits (deadbeef1380 013 8000 is a token; a1-38-00-13-80-00 a MAC address)."""
    first = start
    while first > 0 and first not in view.gaps and view.text[first - 1] in _ASCII_LETTERS and start - first <= 8:
        first -= 1
    label = view.text[first:start]
    return (2 <= len(label) <= 8 and not _HEX_LETTERS.issuperset(label)
            and view.apart_before(first, _ASCII_ALPHANUMERICS))


def _plates_masked(text: str) -> str:
    view = _View(text, _PLATE_VIEW_SEPARATORS)
    replacements = []
    searched_from = 0
    for province in _PLATE_START.finditer(view.text):
        if province.start() < searched_from:
            continue
        letter = province.end()
        for length in _PLATE_REST_LENGTHS:
            end = letter + length
            if (end > len(view.text) or not _PLATE_REST.fullmatch(view.text, letter, end)
                    or not view.apart_after(end, _ASCII_ALPHANUMERICS)):
                continue
            separated = any(province.start() < gap < end for gap in view.gaps)
            digits = sum(character in _ASCII_DIGITS for character in view.text[letter:end])
            if separated and digits < _SEPARATED_PLATE_DIGITS:
                continue
            head_start, head_end = view.kept_head(province.start(), letter)
            tail_start, tail_end = view.kept_tail(end - 1, end)
            replacements.append((head_start, tail_end, f"{text[head_start:head_end]}***{text[tail_start:tail_end]}"))
            searched_from = end
            break
    return _replaced(text, replacements)


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
