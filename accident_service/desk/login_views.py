"""Sign-in and sign-out pages: a Flask-WTF form, throttled, each attempt audited (desk.sign_in)."""

from __future__ import annotations

from flask import redirect, render_template, request, session, url_for
from flask_login import login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from accident_service.desk.auth import current_staff
from accident_service.desk.blueprint import bp, safe_next
from accident_service.desk.i18n import t
from accident_service.desk.sign_in import sign_in, sign_out
from accident_service.desk.throttle import note_failure, throttled
from accident_service.web import current_runtime


class LoginForm(FlaskForm):
    username = StringField(validators=[DataRequired(), Length(max=64)])
    password = PasswordField(validators=[DataRequired(), Length(max=256)])


@bp.route("/login", methods=["GET", "POST"])
@throttled
def login():
    form = LoginForm()
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET" and current_staff() is not None:
        return redirect(next_url or url_for("desk.queue"))
    error = None
    if form.validate_on_submit():
        runtime = current_runtime()
        with runtime.unit_of_work() as db:
            staff = sign_in(db, form.username.data or "", form.password.data or "", now=runtime.clock.now(),
                            address=request.remote_addr)
        if staff is not None:
            session.clear()  # nothing from before the sign-in is carried into the officer's session
            login_user(staff)
            session.permanent = True  # the idle lifetime applies (desk.sessions)
            return redirect(next_url or url_for("desk.queue"), 303)
        note_failure()
        error = t("desk.login.failed")
    return render_template("login.html", form=form, error=error, next_url=next_url)


@bp.post("/logout")
def logout():
    staff = current_staff()
    runtime = current_runtime()
    if staff is not None:
        with runtime.unit_of_work() as db:
            sign_out(db, staff, now=runtime.clock.now(), address=request.remote_addr)
    logout_user()
    session.clear()
    return redirect(url_for("desk.login", signed_out=1), 303)
