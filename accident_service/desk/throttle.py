"""Sign-in throttling (Flask-Limiter): failed attempts counted per username and per client address.

Only failures count (``deduct_when``): an officer who signs in at the first
try uses nothing up. Once either count is reached within
DESK_LOGIN_LOCKOUT_MINUTES every attempt is refused with 429 until the window
moves on, even with the right password, so guessing gains nothing. Counts
live in Redis when REDIS_URL is set (shared by every worker and host), else
in the process's memory; if Redis stops answering, the memory counts take over.
"""

from __future__ import annotations

import re

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from accident_service.web import EXTENSION_KEY, current_runtime

#: Seconds to wait for Redis to connect or answer: a sign-in meeting a Redis that accepts and never answers waited
#: redis-py's default, 5 s for each of its two limits (acceptance pass), holding a worker's thread; past this the
#: memory counts take over, as when Redis refuses.
REDIS_TIMEOUT_SECONDS = 0.5

def _not_sign_in() -> bool:
    """Only the sign-in form is limited: every other request (the webhook's hot path) skips the limiter's work."""
    return request.endpoint != "desk.login"


def init_app(app: Flask) -> None:
    """A limiter of this app's own, on the views :func:`throttled` marked (call it once they are registered).

    Of its own: a Limiter keeps its storage, its storage options and whether that storage is down in itself, and
    each app it is given replaces them. One shared by the apps of a process (the tests', two apps side by side)
    gave an app the Redis of another, or its fallback: CI met a memory-storage app that "recovered" from the
    Redis outage an earlier app had met, mid-test, its counts dropped."""
    settings = app.extensions[EXTENSION_KEY].settings
    # limits names a unix socket's URL redis+unix:// where redis-py (and the settings) say unix:// (review: the app
    # would not start with one).
    app.config["RATELIMIT_STORAGE_URI"] = (re.sub(r"^unix://", "redis+unix://", settings.REDIS_URL)
                                           if settings.REDIS_URL else "memory://")
    if settings.REDIS_URL:
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {"socket_timeout": REDIS_TIMEOUT_SECONDS,
                                                   "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
    limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=False,
                      in_memory_fallback_enabled=True, strategy="moving-window", key_prefix="desk-login")
    limiter.request_filter(_not_sign_in)
    limiter.init_app(app)
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, _THROTTLED, False):
            app.view_functions[endpoint] = _limited(limiter, view)


def _per_username() -> str:
    settings = current_runtime().settings
    return f"{settings.DESK_LOGIN_MAX_FAILURES} per {settings.DESK_LOGIN_LOCKOUT_MINUTES} minutes"


def _per_address() -> str:
    settings = current_runtime().settings
    return f"{settings.DESK_LOGIN_MAX_FAILURES_PER_IP} per {settings.DESK_LOGIN_LOCKOUT_MINUTES} minutes"


def _typed_username() -> str:
    return (request.form.get("username") or "").strip().lower()[:64] or "-"


def note_failure() -> None:
    """Mark this sign-in attempt as failed: it counts against the username and the address."""
    g.desk_login_failed = True


def _failed(response) -> bool:
    return bool(g.get("desk_login_failed"))


_THROTTLED = "desk_sign_in_throttled"


def throttled(view):
    """Marks a sign-in view: :func:`init_app` puts both limits on it (POST only), with the app's own limiter."""
    setattr(view, _THROTTLED, True)
    return view


def _limited(limiter: Limiter, view):
    view = limiter.limit(_per_username, key_func=_typed_username, methods=["POST"], deduct_when=_failed,
                         scope="username")(view)
    return limiter.limit(_per_address, key_func=get_remote_address, methods=["POST"], deduct_when=_failed,
                         scope="address")(view)
