"""Traffic-accident self-report service."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from accident_service import request_ids
from accident_service.db import (
    UNAVAILABLE_ERRORS,
    DatabaseUnavailable,
    commits_watched,
    error_name,
    lost_before_anything_was_committed,
)
from accident_service.errors import ServiceError
from accident_service.logs import configure_logging
from accident_service.runtime import Runtime, build_runtime
from accident_service.settings import Settings, SettingsError, load_settings
from accident_service.web import EXTENSION_KEY, CookieSessions, NoSessions

__all__ = ["create_app", "SettingsError"]
log = logging.getLogger(__name__)


def create_app(config: Settings | Mapping[str, Any] | None = None, *, runtime: Runtime | None = None) -> Flask:
    """The only app factory.

    ``config`` is a Settings object or a mapping of setting names to values
    that override the environment (tests). Raises SettingsError, naming the
    variable, when a setting is missing, malformed or unusable; with AUTO_MIGRATE,
    the driver's error for a database not reachable now (schema.upgrade_or_explain).
    """
    if runtime is not None:
        settings = runtime.settings
    else:
        settings = config if isinstance(config, Settings) else load_settings(config)
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    if settings.AUTO_MIGRATE:
        from accident_service.schema import upgrade_or_explain

        upgrade_or_explain(settings.DATABASE_URL)
    runtime = runtime or build_runtime(settings)
    # Here, not at the top: gunicorn's master imports this package to read its settings, and must not import
    # prometheus_client (it picks its mode, one process or many, when imported).
    from accident_service import metrics
    from accident_service.notify.channels import SEND_SERIES
    from accident_service.photos.checks import REJECTION_CODES

    metrics.start_series(photo_rejections=REJECTION_CODES, sends=SEND_SERIES)

    app = _bare_app(settings, runtime, _RunOnceMoreAfterALostConnection)
    from accident_service.desk import auth

    auth.init_app(app)
    _register_blueprints(app)
    app.wsgi_app = _PlatformDoor(app.wsgi_app, _platform_app(settings, runtime).wsgi_app)  # type: ignore[method-assign]
    if settings.TRUSTED_PROXIES:
        # The client's address and scheme as the proxies in front pass them on (the last TRUSTED_PROXIES entries
        # of X-Forwarded-For, each added by one of ours; entries a client sent itself come before them and are
        # ignored): without it every desk behind the proxy shared its address in the sign-in throttle and the
        # audit (operator acceptance pass; gunicorn's forwarded_allow_ips governs the scheme only).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.TRUSTED_PROXIES,  # type: ignore[method-assign]
                                x_proto=settings.TRUSTED_PROXIES)
    return app


def _bare_app(settings: Settings, runtime: Runtime, app_class: type[Flask]) -> Flask:
    """A Flask app with what every request needs: the runtime, a request id, typed errors to HTTP."""
    app = app_class(__name__)
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.APP_ENV == "production",
        JSON_AS_ASCII=False,
    )
    # On both apps: Flask's default builds a signing serializer for every request, a push included.
    app.session_interface = CookieSessions()
    app.extensions[EXTENSION_KEY] = runtime
    request_ids.install(app)
    _map_errors(app)
    return app


class _RunOnceMoreAfterALostConnection(Flask):
    """Flask, where a request whose database connection died before it committed a write runs once more, whole
    (its before-request hooks, which load the signed-in officer or the API caller, and its view), on a fresh
    connection: a restart or a failover answers the caller, not 503 (accident_service.db). Once: a second loss is
    the database's outage, answered 503 by the error mapping. A unit of work that only read (the officer's or the
    caller's look-up before the view, a page's queries) keeps nothing, so a page or a refused action lost after it
    runs again too; one lost after a write was committed does not (acceptance pass: every request lost after the
    sign-in's look-up was answered 503)."""

    def full_dispatch_request(self):
        with commits_watched():
            return super().full_dispatch_request()

    def handle_user_exception(self, e):
        if g.get("_ran_once_more") or not lost_before_anything_was_committed(e):
            return super().handle_user_exception(e)
        g._ran_once_more = True
        log.warning("database connection lost before anything was committed (%s); running the request once more",
                    error_name(e))
        try:
            answer = self.preprocess_request()
            return self.dispatch_request() if answer is None else answer
        except Exception as again:
            return super().handle_user_exception(again)


def _platform_app(settings: Settings, runtime: Runtime) -> Flask:
    """The WeChat callback on an app of its own: the platform signs its pushes and sends no cookie, so none of
    the staff pages' machinery (sessions, sign-in, CSRF, the sign-in throttle's hooks) runs for a push.
    Measured: those hooks cost a push about a third of a millisecond of CPU, a quarter of what the
    service spent beyond the durable floor (README "Performance")."""
    from accident_service.wechat import webhook

    # Plain Flask: every database call of a push goes through Runtime.single_statement, which runs its statement
    # again itself after a lost connection and counts as a commit, so a push never runs again whole (review: the
    # watch cost a push 5 µs for nothing).
    platform = _bare_app(settings, runtime, Flask)
    platform.session_interface = NoSessions()
    webhook.init_app(platform)
    return platform


class _PlatformDoor:
    """WSGI: requests for the WeChat callback path go to the platform's app, every other to the service's."""

    def __init__(self, service, platform) -> None:
        from accident_service.wechat.webhook import CALLBACK_PATH

        self._service, self._platform, self._path = service, platform, CALLBACK_PATH

    def __call__(self, environ, start_response):
        app = self._platform if environ.get("PATH_INFO") == self._path else self._service
        return app(environ, start_response)


#: Paths whose every error answer is JSON, the framework's own (404, 405, 422, 500) included.
JSON_ERROR_PATHS = "/api/"
# Codes for the framework's errors; others are their HTTP name in snake case.
_HTTP_ERROR_CODES = {401: "unauthenticated", 422: "invalid_input", 500: "internal_error"}


def _map_errors(app: Flask) -> None:
    """Typed errors to HTTP, once for the whole service.

    A ServiceError becomes its status and ``{code, message, details}``. Any
    other HTTP error under /api/ takes the same shape (validation messages in
    ``details.errors``); elsewhere the framework's own page is kept.
    """

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.http_status, exc.response_headers()

    def _database_unavailable(exc: Exception):
        # Not the HTML 500: a 503 the caller can retry on (the webhook answers in plain text itself).
        app.logger.warning("database unavailable: %s", error_name(exc))
        return _service_error(DatabaseUnavailable())

    for error in UNAVAILABLE_ERRORS:
        app.register_error_handler(error, _database_unavailable)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if not request.path.startswith(JSON_ERROR_PATHS):
            return exc
        data = getattr(exc, "data", None) or {}  # webargs' abort() puts validation messages here
        status = exc.code or 500
        body = {"code": _HTTP_ERROR_CODES.get(status, (exc.name or "error").lower().replace(" ", "_")),
                "message": "The request does not fit the API description: details.errors says where."
                if "messages" in data else exc.description or exc.name,
                "details": {"errors": data["messages"]} if "messages" in data else {}}
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"} | dict(data.get("headers") or {})
        return jsonify(body), status, headers


def _register_blueprints(app: Flask) -> None:
    from accident_service import api, ops
    from accident_service.desk import web as desk_web
    from accident_service.storage import views as storage_views

    app.register_blueprint(ops.bp)
    app.register_blueprint(storage_views.bp)
    desk_web.init_app(app)
    api.init_app(app)
