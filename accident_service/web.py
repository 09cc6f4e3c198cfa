"""Small helpers views share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app
from flask.sessions import SecureCookieSessionInterface, SessionInterface

if TYPE_CHECKING:  # the runtime is built by the app factory; views only fetch it
    from accident_service.runtime import Runtime

EXTENSION_KEY = "accident_service"


def current_runtime() -> Runtime:
    return current_app.extensions[EXTENSION_KEY]


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), or None for any other."""
    scheme, _, token = header.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer built only when there is a cookie to read.

    Flask builds one on every request (and itsdangerous serializes a probe value to do so):
    a cost every WeChat push paid for a session it never has. Saving a modified session
    still builds it, as before.
    """

    def open_session(self, app, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


class NoSessions(SessionInterface):
    """No session at all, not even a cookie looked for: for the WeChat platform's app, whose pushes carry none.

    Flask gives each request a null session instead, which refuses writes.
    """

    def open_session(self, app, request):
        return None

    def save_session(self, app, session, response) -> None:
        return None
