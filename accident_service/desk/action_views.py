"""The desk's forms that change something: one case action per POST, and the language switch."""

from __future__ import annotations

from flask import flash, redirect, request, url_for

from accident_service.desk.acting import ACTIONS, perform
from accident_service.desk.auth import current_staff
from accident_service.desk.blueprint import bp, safe_next
from accident_service.desk.i18n import LANGUAGE_COOKIE, t
from accident_service.errors import NotFound
from accident_service.messages import LANGUAGES
from accident_service.web import current_runtime

LANGUAGE_COOKIE_SECONDS = 365 * 24 * 3600


@bp.post("/cases/<case_no>/<action>")
def act(case_no: str, action: str):
    if action not in ACTIONS:
        raise NotFound(f"no desk action {action!r}")
    perform(current_runtime(), current_staff(), case_no, action, request.form)
    flash(t(f"desk.done.{action}"), "ok")
    return redirect(safe_next(request.form.get("next")) or url_for("desk.case_page", case_no=case_no), 303)


@bp.post("/language")
def language():
    chosen = request.form.get("lang")
    response = redirect(safe_next(request.form.get("next")) or url_for("desk.queue"), 303)
    if chosen in LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, chosen, max_age=LANGUAGE_COOKIE_SECONDS, httponly=True,
                            samesite="Lax", secure=current_runtime().settings.APP_ENV == "production")
    return response
