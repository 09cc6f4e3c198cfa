"""Wires the desk into the app: its pages, session cookies, sign-in throttling. Called once by create_app."""

from __future__ import annotations

from flask import Flask

from accident_service.desk import sessions, throttle


def init_app(app: Flask) -> None:
    from accident_service.desk import action_views, login_views, report_views, views  # noqa: F401  (routes)
    from accident_service.desk.auth import login_manager
    from accident_service.desk.blueprint import bp

    sessions.init_app(app)
    app.register_blueprint(bp)
    throttle.init_app(app)  # on the views registered
    # Only the desk's pages send a signed-out visitor to the sign-in form; the JSON API answers 401.
    login_manager.blueprint_login_views["desk"] = "desk.login"
