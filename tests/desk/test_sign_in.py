"""Sign-in: sessions (cookie flags, idle lifetime), throttling per username and address, audit, sign-out."""

from __future__ import annotations

import re
import secrets
import socket
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from accident_service import create_app
from accident_service.desk import throttle
from accident_service.models import AuditEvent
from tests.desk.conftest import sign_in
from tests.desk.factories import PASSWORD, add_staff
from tests.support.html_forms import form_to
from tests.test_cli import run_cli


@pytest.fixture
def settings_overrides(settings_overrides):
    return {**settings_overrides, "DESK_LOGIN_MAX_FAILURES": 3, "DESK_LOGIN_MAX_FAILURES_PER_IP": 5}


@pytest.fixture
def officers(runtime, desk):
    return ["th", "yx"]


def audit_actions(runtime) -> list[tuple[str, str]]:
    with runtime.unit_of_work() as session:
        return [(e.action, e.actor) for e in session.scalars(select(AuditEvent).where(
            AuditEvent.action.like("staff.%")).order_by(AuditEvent.id))]


def test_a_wrong_password_says_so_without_telling_which_part_and_is_audited(client, runtime, officers):
    for username in ("th", "nobody"):
        page = sign_in(client, username, "wrong-password")
        assert page.status_code == 200 and "用户名或密码不正确" in page.get_data(as_text=True)
    assert audit_actions(runtime) == [("staff.login_failed", "th"), ("staff.login_failed", "nobody")]
    assert sign_in(client, "th").status_code == 303
    assert audit_actions(runtime)[-1] == ("staff.login", "th")


def test_repeated_failures_lock_the_username_even_for_the_right_password(client, officers):
    for _ in range(3):
        assert sign_in(client, "th", "wrong-password").status_code == 200
    locked = sign_in(client, "th")
    assert locked.status_code == 429 and "15 分钟后再试" in locked.get_data(as_text=True)
    assert sign_in(client, "yx").status_code == 303  # another officer at the same desk PC is not locked out


def test_repeated_failures_from_one_address_lock_every_username(client, officers):
    for n in range(5):
        sign_in(client, f"guess{n}", "wrong-password")
    assert sign_in(client, "yx").status_code == 429


def test_a_successful_sign_in_costs_nothing(app, officers):
    for _ in range(6):  # more than either limit, each a new browser
        assert sign_in(app.test_client(), "th").status_code == 303


@pytest.mark.parametrize("next_url, landing", [("/desk/summary", "/desk/summary"), ("https://evil.example/", "/desk/"),
                                               ("//evil.example/desk/", "/desk/")])
def test_after_sign_in_only_desk_pages_are_followed(client, officers, next_url, landing):
    page = client.get("/desk/login", query_string={"next": next_url})
    form = form_to(page.get_data(as_text=True), "/desk/login")
    response = client.post("/desk/login", data=form.fields | {"username": "th", "password": PASSWORD})
    assert response.headers["Location"] == landing


def test_session_cookies_are_http_only_same_site_and_secure_in_production(client, officers, settings_overrides,
                                                                           clock):
    cookie = sign_in(client, "th").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    production = create_app({**settings_overrides, "APP_ENV": "production", "SECRET_KEY": secrets.token_hex(32),
                             "WECHAT_APP_ID": "wx0123456789", "WECHAT_APP_SECRET": "real-secret",
                             "WECHAT_TOKEN": "real-token",
                             "WECHAT_API_BASE_URL": "https://127.0.0.1:9/cgi-bin/"})  # production: TLS, never called
    cookie = sign_in(production.test_client(), "th").headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_an_idle_session_is_refused_by_the_server_and_the_queue_refresh_is_not_activity(app, client, officers):
    sign_in(client, "th")
    assert "Set-Cookie" in client.get("/desk/").headers  # the officer looking: the session is renewed
    assert "Set-Cookie" not in client.get("/desk/queue/rows").headers  # the page refreshing itself: it is not
    serializer = app.session_interface.get_signing_serializer(app)
    data = serializer.loads(client.get_cookie("session").value)
    signer = serializer.make_signer(serializer.salt)
    idle_seconds = app.permanent_session_lifetime.total_seconds() + 60
    signer.get_timestamp = lambda: int(time.time() - idle_seconds)  # a cookie last renewed that long ago
    client.set_cookie("session", signer.sign(serializer.dump_payload(data)).decode())
    assert client.get("/desk/").headers["Location"].startswith("/desk/login")
    assert client.get("/desk/queue/rows").status_code == 401


def test_sign_out_ends_the_session_and_is_audited(client, runtime, officers):
    sign_in(client, "th")
    page = client.get("/desk/").get_data(as_text=True)
    form = form_to(page, "/desk/logout")
    assert client.post("/desk/logout", data=form.fields).headers["Location"].startswith("/desk/login")
    assert client.get("/desk/").status_code == 303
    assert audit_actions(runtime)[-1] == ("staff.logout", "th")


def test_a_session_cookie_kept_from_before_the_sign_out_is_refused_by_the_server(app, client, runtime, officers):
    """Acceptance pass: the cookie is signed, not stored; one copied before the sign-out (a shared desk PC) still
    read the queue, and checked a case in through the API, as the officer who had signed out."""
    sign_in(client, "th")
    kept = client.get_cookie("session").value
    colleague = app.test_client()
    sign_in(colleague, "yx")
    form = form_to(client.get("/desk/").get_data(as_text=True), "/desk/logout")
    client.post("/desk/logout", data=form.fields)

    copy = app.test_client()
    copy.set_cookie("session", kept)
    assert copy.get("/desk/").headers["Location"].startswith("/desk/login")
    assert copy.get("/api/v1/me").status_code == 401
    assert colleague.get("/desk/").status_code == 200  # another officer's session is theirs
    sign_in(client, "th")  # and the officer signs in again as before
    assert client.get("/desk/").status_code == 200


def test_a_new_password_ends_the_sessions_signed_in_with_the_old_one(client, runtime, officers):
    from accident_service.desk.accounts import set_password
    from accident_service.models import StaffUser

    sign_in(client, "th")
    assert client.get("/desk/").status_code == 200
    with runtime.unit_of_work() as session:
        set_password(session.scalar(select(StaffUser).where(StaffUser.username == "th")), "another-long-pass")

    assert client.get("/desk/").headers["Location"].startswith("/desk/login")


def test_failures_are_counted_in_redis_when_it_is_configured(runtime, settings_overrides, officers):
    app = create_app({**settings_overrides, "REDIS_URL": "redis://127.0.0.1:6379/0"})
    username = f"probe-{uuid.uuid4().hex[:8]}"  # Redis outlives the test: a name of its own
    with runtime.unit_of_work() as session:
        add_staff(session, runtime, username, "supervisor", None)
    client = app.test_client()
    store = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for _ in range(3):
            sign_in(client, username, "wrong-password")
        assert [key for key in store.scan_iter(match=f"*desk-login*{username}*")]
        assert sign_in(client, username).status_code == 429
        other_process = create_app({**settings_overrides, "REDIS_URL": "redis://127.0.0.1:6379/0"})
        assert sign_in(other_process.test_client(), username).status_code == 429  # shared, not per process
    finally:
        for key in store.scan_iter(match="*desk-login*"):
            store.delete(key)
        store.close()


def test_the_readmes_command_unlocks_a_username_for_every_process(runtime, settings_overrides, officers):
    """The README said ``limiter clear --key KEY``: given the username, Flask-Limiter printed "Cleared" and cleared
    nothing (its keys carry the throttle's prefix). The command is read from the README and run as an operator
    would."""
    redis_url = "redis://127.0.0.1:6379/0"
    app = create_app({**settings_overrides, "REDIS_URL": redis_url})
    username = f"probe-{uuid.uuid4().hex[:8]}"
    with runtime.unit_of_work() as session:
        add_staff(session, runtime, username, "supervisor", None)
    client = app.test_client()
    store = redis.Redis.from_url(redis_url)
    try:
        for _ in range(3):
            sign_in(client, username, "wrong-password")
        assert sign_in(client, username).status_code == 429
        env = {key: str(value) for key, value in settings_overrides.items()} | {"REDIS_URL": redis_url}
        documented = re.search(r"`accident-service\s+(limiter\s+clear\s[^`]*USERNAME[^`]*)`",
                               (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")).group(1)
        result = run_cli(*documented.replace("USERNAME", username).split(), env=env)
        assert result.returncode == 0, result.stderr
        assert sign_in(client, username).status_code == 303
    finally:
        for key in store.scan_iter(match="*desk-login*"):
            store.delete(key)
        store.close()


def test_a_redis_that_never_answers_holds_a_sign_in_at_most_a_second_or_so(settings_overrides, officers):
    """Acceptance pass: with Redis taking connections but never answering, each sign-in waited redis-py's default
    5 s for each of its two limits, holding a worker's thread; then the memory counts take over."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections complete in the kernel's backlog
        app = create_app({**settings_overrides, "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"})
        client = app.test_client()
        for password in ("wrong-password", PASSWORD):
            started = time.monotonic()
            answer = sign_in(client, "th", password)
            assert time.monotonic() - started < 2 * 2 * throttle.REDIS_TIMEOUT_SECONDS + 0.5
        assert answer.status_code == 303  # the right password still signs in


def test_a_redis_reached_by_a_unix_socket_holds_the_counts(settings_overrides, officers, tmp_path):
    """The settings take unix:///path (redis-py's form); the throttle's storage names it otherwise, and the app did
    not start (review). With nothing at the path, the memory counts take over."""
    app = create_app({**settings_overrides, "REDIS_URL": f"unix://{tmp_path}/redis.sock?db=0"})
    assert app.config["RATELIMIT_STORAGE_URI"].startswith("redis+unix://")
    client = app.test_client()
    for _ in range(3):
        sign_in(client, "th", "wrong-password")
    assert sign_in(client, "th").status_code == 429


def test_an_app_s_counts_are_its_own_whatever_another_app_of_the_process_met(settings_overrides, officers,
                                                                             tmp_path):
    """CI: one Limiter served every app of the process, and each app given to it replaced its storage, but not its
    record that the storage was down. An app on memory storage, made after one whose Redis was down, counted in
    the fallback; a second on, the limiter "recovered" onto the memory storage, and the counts were gone."""
    down = create_app({**settings_overrides, "REDIS_URL": f"unix://{tmp_path}/nothing-here.sock?db=0"})
    sign_in(down.test_client(), "th", "wrong-password")  # its Redis is down: its limiter falls back
    client = create_app(settings_overrides).test_client()
    for _ in range(3):
        sign_in(client, "yx", "wrong-password")
    time.sleep(1.1)  # past the first look the fallen-back limiter takes at its storage (2**0 s)
    assert sign_in(client, "yx").status_code == 429


@pytest.mark.parametrize(("proxies", "seen"), [(0, "10.0.0.1"), (1, "203.0.113.9")], ids=["direct", "one-proxy"])
def test_behind_trusted_proxies_a_client_is_known_by_the_address_they_pass_on(settings_overrides, officers, runtime,
                                                                            proxies, seen):
    """TRUSTED_PROXIES=1: the address our proxy adds to X-Forwarded-For, in the audit and the per-address throttle,
    not the proxy's own (every desk behind it shared one budget of failures; operator acceptance pass), and not an
    entry the client wrote itself (it comes first). Without it the header is not believed: anyone can send one."""
    app = create_app({**settings_overrides, "TRUSTED_PROXIES": proxies})
    forwarded = {"X-Forwarded-For": "198.51.100.66, 203.0.113.9", "X-Forwarded-Proto": "https",
                 "Referer": "https://localhost/desk/login"}  # over HTTPS, the CSRF check wants the same-site referrer
    client = app.test_client()
    client.environ_base.update({"REMOTE_ADDR": "10.0.0.1", **{f"HTTP_{name.upper().replace('-', '_')}": value
                                                              for name, value in forwarded.items()}})
    assert sign_in(client, "nobody", "wrong-password").status_code == 200
    with runtime.unit_of_work() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "staff.login_failed")).one()
        assert failed.after["address"] == seen

    # The per-address budget (5 here) is the forwarded client's: another client behind the same proxy signs in.
    for n in range(4):
        sign_in(client, f"guess{n}", "wrong-password")
    other = app.test_client()
    other.environ_base.update({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.10",
                               "HTTP_X_FORWARDED_PROTO": "https", "HTTP_REFERER": "https://localhost/desk/login"})
    assert sign_in(other, "yx").status_code == (303 if proxies else 429)
