"""Signed-cookie sessions: built lazily, still signed and read back."""

from __future__ import annotations

from flask import jsonify, session


def test_sessions_are_signed_kept_and_read_back_while_cookieless_requests_set_none(app):
    app.config["WTF_CSRF_ENABLED"] = False  # the session itself is what this test is about

    @app.post("/test-session")
    def _set():
        session["who"] = "officer-1"
        return "ok"

    @app.get("/test-session")
    def _get():
        return jsonify(who=session.get("who"))

    client = app.test_client()
    assert "Set-Cookie" not in client.get("/test-session").headers  # nothing to keep, nothing sent
    assert client.get("/test-session").json == {"who": None}
    assert "Set-Cookie" in client.post("/test-session").headers
    assert client.get("/test-session").json == {"who": "officer-1"}
    client.set_cookie("session", "forged-value")
    assert client.get("/test-session").json == {"who": None}  # a bad signature reads as no session
