"""Staff session cookies: signed, HttpOnly, SameSite=Lax, Secure in production, and an idle lifetime.

The cookie is re-signed on each request, and Flask refuses one signed longer
ago than PERMANENT_SESSION_LIFETIME: DESK_SESSION_IDLE_MINUTES without a
request signs the officer out, checked by the server, not only by the
browser's expiry. The queue's own background refresh is not the officer's
activity: it does not renew the cookie, so a queue left open on an
unattended PC still signs out.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, g
from flask.sessions import SecureCookieSessionInterface

from accident_service.web import EXTENSION_KEY


class IdleAwareSessionInterface(SecureCookieSessionInterface):
    def should_set_cookie(self, app, session) -> bool:
        if g.get("background_request"):
            return session.modified
        return super().should_set_cookie(app, session)


def mark_background_request() -> None:
    """This request is the page refreshing itself, not the officer: it does not extend the session."""
    g.background_request = True


def init_app(app: Flask) -> None:
    settings = app.extensions[EXTENSION_KEY].settings
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.APP_ENV == "production",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.DESK_SESSION_IDLE_MINUTES),
        SESSION_REFRESH_EACH_REQUEST=True,
        # A form's token lives as long as the session (which the idle lifetime ends), not an hour
        # of its own: a queue left open all morning still confirms with one click.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = IdleAwareSessionInterface()
