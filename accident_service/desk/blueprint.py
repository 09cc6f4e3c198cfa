"""The desk blueprint: who may come in, what every page gets, and how typed errors become pages (once).

Views (``views``, ``action_views``, ``login_views``, ``report_views``) only
parse, call one function and render; refusals from the lifecycle and the
other typed errors are turned into a message here, not caught view by view.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError

from accident_service.booking.appointments import SlotUnavailable
from accident_service.cases.lifecycle import (
    NOTE_MAX_CHARS,
    REASON_MAX_CHARS,
    RETAKE_MAX_DEADLINE_MINUTES,
    TransitionRefused,
)
from accident_service.db import UNAVAILABLE_ERRORS, DatabaseUnavailable, error_name
from accident_service.desk import i18n, labels
from accident_service.desk.auth import current_staff
from accident_service.errors import NotFound, ServiceError
from accident_service.messages import catalogue
from accident_service.models import StaffRole
from accident_service.web import current_runtime

log = logging.getLogger(__name__)
bp = Blueprint("desk", __name__, url_prefix="/desk", template_folder="templates", static_folder="static",
               static_url_path="/static")

#: The forms' maxlength and max: the lifecycle's limits, so the browser stops the officer where the server would.
FORM_LIMITS = {"reason": REASON_MAX_CHARS, "note": NOTE_MAX_CHARS, "deadline_minutes": RETAKE_MAX_DEADLINE_MINUTES}
PUBLIC_ENDPOINTS = frozenset({"desk.login", "desk.static", "desk.language"})
BACKGROUND_ENDPOINTS = frozenset({"desk.queue_rows"})  # fetched by the page's script: 401, not a redirect
# Photos come through presigned URLs: the local store's (same origin) or S3's (another host).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: https: http:; script-src 'self'; "
                           "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'self'")


@bp.before_request
def _require_staff():
    if request.endpoint in PUBLIC_ENDPOINTS or current_staff() is not None:
        return None
    if request.endpoint in BACKGROUND_ENDPOINTS:
        return Response(status=401)
    target = request.full_path if request.method == "GET" else None
    return redirect(url_for("desk.login", next=safe_next(target)), 303)


@bp.after_request
def _headers(response: Response) -> Response:
    if request.endpoint != "desk.static":
        response.headers.setdefault("Cache-Control", "no-store")  # pages carry names, plates and phones
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.context_processor
def _page_context():
    staff = current_staff()
    return {"t": i18n.t, "lang": i18n.current_language(), "html_lang": i18n.HTML_LANG[i18n.current_language()],
            "staff": staff, "is_supervisor": staff is not None and staff.role is StaffRole.SUPERVISOR,
            "local_time": i18n.local_time, "labels": labels, "settings": current_runtime().settings,
            "form_limits": FORM_LIMITS}


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path of the desk on this site (no open redirect), else None."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/desk/") or target.startswith("//"):
        return None
    return target.rstrip("?")


def back_to() -> str:
    """Where a refused form returns: the case page it came from, else the queue."""
    case_no = (request.view_args or {}).get("case_no")
    return url_for("desk.case_page", case_no=case_no) if case_no else url_for("desk.queue")


@bp.errorhandler(TransitionRefused)
def _refused(exc: TransitionRefused):
    flash(labels.refusal(exc), "error")
    return redirect(back_to(), 303)


@bp.errorhandler(SlotUnavailable)
def _slot_unavailable(exc: SlotUnavailable):
    flash(labels.refusal(exc), "error")
    return redirect(back_to(), 303)


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound):
    return render_template("error.html", title=i18n.t("desk.error.not_found_title"),
                           message=i18n.t("desk.error.not_found")), 404


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError):
    # A form's field named where the catalogue has a sentence for it (an officer's pass met one "the form is
    # incomplete" for a deadline out of range, a missing version and a slot that is not a number alike).
    by_field = f"desk.refused.{exc.code}.{exc.details.get('field')}"
    flash(_text_or(by_field if by_field in catalogue() else f"desk.refused.{exc.code}", exc.message, exc.details),
          "error")
    return redirect(back_to(), 303)


@bp.errorhandler(DatabaseUnavailable)
def _database_unavailable(exc: Exception):
    # A page, not the API's JSON (the app's mapping), nor the refusal's redirect back to a page that fails again.
    # The page is shown as to nobody signed in: the account is read from that database, and flask-login would ask
    # it again for every template (another deadline, then a 500). Its own record of the request's user.
    current_app.login_manager._update_request_context_with_user(None)
    log.warning("database unavailable: %s", error_name(exc))  # the line the app's own mapping writes elsewhere
    return render_template("error.html", message=i18n.t("desk.error.database_unavailable")), 503, {"Retry-After": "10"}


for _error in UNAVAILABLE_ERRORS:
    bp.register_error_handler(_error, _database_unavailable)


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError):
    return render_template("error.html", message=i18n.t("desk.error.csrf")), 400


@bp.errorhandler(RateLimitExceeded)
def _throttled(exc: RateLimitExceeded):
    from accident_service.desk.login_views import LoginForm

    minutes = current_runtime().settings.DESK_LOGIN_LOCKOUT_MINUTES
    return render_template("login.html", form=LoginForm(), error=i18n.t("desk.login.throttled", minutes=minutes)), 429


def _text_or(key: str, fallback: str, params: dict) -> str:
    if key in catalogue():
        return i18n.t(key, **params)
    return i18n.t("desk.refused.other", detail=fallback)
