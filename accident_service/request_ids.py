"""A request id on every web request: taken from ``X-Request-Id`` when sane, else made; echoed back.

Every line logged while the request is served carries it (``logs.log_context``),
so an operator can follow one request through the lines of several loggers,
and a proxy's id ties our lines to its own.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from collections.abc import Mapping

from flask import Flask

from accident_service.logs import mask_personal_data, reset_request_id, set_request_id

HEADER = "X-Request-Id"
# Short, and nothing that could break a log line or a header (spaces, quotes, newlines, control characters).
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ENVIRON_KEY = "HTTP_" + HEADER.upper().replace("-", "_")


class AccessLineRequestId(logging.Filter):
    """Fills the ``request_id`` field of gunicorn's access line (config/gunicorn.conf.py, JSON logs).

    gunicorn writes that line after the request's own context has ended, so the field said "-" and a search
    by id found every line of the request but its access line. The id is the one the answer carried: the
    line's ``{x-request-id}o`` atom.
    """

    ATOM = "{" + HEADER.lower() + "}o"

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        answered = atoms.get(self.ATOM) if isinstance(atoms, Mapping) else None
        if answered and answered != "-":
            record.request_id = answered
        return True


def request_id_from(header_value: str | None) -> str:
    """The caller's id when it is a sane token that names nobody, else a new random one: an id the log would mask
    (one holding a mobile number or an openid) would be logged other than it is echoed, and the search by it find
    nothing (acceptance pass)."""
    if header_value and _SANE.fullmatch(header_value) and mask_personal_data(header_value) == header_value:
        return header_value
    return new_request_id()


def new_request_id() -> str:
    """24 characters of base32 (A-Z, 2-7): 120 random bits, and never a "1" or a lower-case letter, so the
    log filter can never take a part of it for a mobile number or an openid and mask the id on its lines
    (a hex id held an 11-digit run starting 1[3-9] once in a few thousand)."""
    return base64.b32encode(secrets.token_bytes(15)).decode("ascii")


def install(app: Flask) -> None:
    """Give every request to ``app`` an id, around the app rather than in its request hooks (three hooks cost a
    WeChat push more than the work they do): lines logged while it is served carry it, the answer echoes it."""
    app.wsgi_app = _with_request_id(app.wsgi_app)  # type: ignore[method-assign]


def _with_request_id(wsgi_app):
    def app(environ, start_response):
        request_id = request_id_from(environ.get(_ENVIRON_KEY))

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        token = set_request_id(request_id)
        try:
            return wsgi_app(environ, start)
        finally:
            reset_request_id(token)

    return app
