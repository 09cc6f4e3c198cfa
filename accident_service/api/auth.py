"""Who sent an API request: an integration's bearer token, or a signed-in desk officer's session.

A token in ``Authorization: Bearer`` wins over any session cookie sent with
it. A session-authenticated write must carry the CSRF token (``X-CSRFToken``,
from ``GET /api/v1/me``): the browser sends the cookie to any site's forms,
but only our pages can read the token. A token-authenticated request needs
none: no browser attaches a bearer token on its own. The API blueprint is
exempt from the global CSRF check for that reason; this module does the
session half of it itself.
"""

from __future__ import annotations

from flask import g, request
from flask_wtf.csrf import CSRFError

from accident_service.api.callers import Caller
from accident_service.api.tokens import TokenHolder, Unauthenticated, authenticate_token
from accident_service.desk.auth import csrf, current_staff
from accident_service.errors import ServiceError
from accident_service.web import bearer_token, current_runtime

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadOnly(ServiceError):
    """A read token tried to change something."""

    code = "read_only"
    http_status = 403


class CsrfFailed(ServiceError):
    code = "csrf_failed"
    http_status = 400


def authenticate() -> None:
    """Find the caller of this request and keep it for the view (:func:`current_caller`); a before-request hook.

    Raises Unauthenticated (no or bad credentials), CsrfFailed (a session
    write without its CSRF token) or ReadOnly (a read token writing).
    """
    header = request.headers.get("Authorization")
    if header is not None:
        caller = Caller.of_token(_token_holder(header))
    else:
        staff = current_staff()
        if staff is None:
            raise Unauthenticated("send 'Authorization: Bearer <token>' (accident-service create-api-token), "
                                  "or sign in at the desk")
        if request.method not in SAFE_METHODS:
            _check_csrf()
        caller = Caller.of_staff(staff)
    if request.method not in SAFE_METHODS and not caller.can_write:
        raise ReadOnly("This token may only read: ask for a write token (accident-service create-api-token "
                       "--scope write) to act on cases.")
    g.api_caller = caller


def current_caller() -> Caller:
    """The caller :func:`authenticate` found for this request."""
    return g.api_caller


def _token_holder(header: str) -> TokenHolder:
    token = bearer_token(header)
    if token is None:
        raise Unauthenticated("expected 'Authorization: Bearer <token>'")
    runtime = current_runtime()
    with runtime.unit_of_work() as session:
        return authenticate_token(session, token, now=runtime.clock.now())


def _check_csrf() -> None:
    try:
        csrf.protect()
    except CSRFError as exc:  # Flask-WTF's error, as ours: one shape for every API error
        raise CsrfFailed(f"{exc.description.rstrip('.')}: send the token of GET /api/v1/me as X-CSRFToken") from exc
