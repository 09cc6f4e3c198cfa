"""The sandbox launcher and its phones' JSON: refusals, the seed, and bad input that changes nothing."""

from __future__ import annotations

import re

import pytest
import requests
from sqlalchemy import func, select

from accident_service.models import InboundMessage, Slot, StaffUser, Station
from accident_service.sandbox import launcher
from accident_service.web import EXTENSION_KEY
from tests.support.live import wait_until


@pytest.mark.parametrize("environ, named", [
    ({"APP_ENV": "production"}, "APP_ENV"),
    ({"APP_ENV": " Production "}, "APP_ENV"),
    ({"WECHAT_APP_SECRET": "real-secret"}, "WECHAT_APP_SECRET"),
    ({"WECHAT_API_BASE_URL": "https://api.weixin.qq.com/cgi-bin/"}, "WECHAT_API_BASE_URL"),
    ({"SMS_SECRET_ID": "AKIDreal", "SMS_SECRET_KEY": "real"}, "SMS_SECRET_ID, SMS_SECRET_KEY"),
])
def test_production_and_real_credentials_refuse_the_sandbox_naming_why(environ, named):
    reason = launcher.refusal(environ)
    assert reason is not None and named in reason
    with pytest.raises(launcher.SandboxRefused):
        launcher.start("127.0.0.1:0", environ=environ)


@pytest.mark.parametrize("environ", [{}, {"APP_ENV": "development"}, {"WECHAT_APP_SECRET": "  "},
                                     {"LOG_LEVEL": "DEBUG", "DATA_DIR": "/tmp/x"}])
def test_development_without_credentials_may_run_the_sandbox(environ):
    assert launcher.refusal(environ) is None


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    running = launcher.start("127.0.0.1:0", data_dir=str(tmp_path_factory.mktemp("sandbox")), environ={})
    yield running
    running.stop()


@pytest.fixture
def browser_session(sandbox):
    """A session holding the page's CSRF token, as the page's script sends it."""
    session = requests.Session()
    page = session.get(sandbox.url + "/sandbox/", timeout=5)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    session.headers["X-CSRFToken"] = token
    return session


def inbox_count(sandbox) -> int:
    with sandbox.app.extensions[EXTENSION_KEY].unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage))


def test_the_seed_is_a_demo_station_with_slots_and_the_demo_officer_and_a_restart_keeps_one_of_each(sandbox):
    runtime = sandbox.app.extensions[EXTENSION_KEY]
    launcher._seed(sandbox.app)  # what a second start does
    with runtime.unit_of_work() as session:
        assert session.scalars(select(Station.code)).all() == ["DEMO"]
        assert session.scalar(select(func.count()).select_from(Slot)) > 0
        officer = session.scalar(select(StaffUser).where(StaffUser.username == launcher.DEMO_USERNAME))
        assert officer.role.value == "officer" and officer.station_id is not None


def test_the_root_leads_to_the_phones_and_the_page_shows_both(sandbox):
    response = requests.get(sandbox.url + "/", timeout=5)
    assert response.url.endswith("/sandbox/") and response.status_code == 200
    assert 'id="phone-a"' in response.text and 'id="phone-b"' in response.text


@pytest.mark.parametrize("path, body, status, error", [
    ("a/text", {"text": "   "}, 400, "type something first"),
    ("a/text", {"text": "x" * 601}, 400, "at most 600 characters"),
    ("a/click", {"key": "NOT_A_MENU_KEY"}, 400, "not a menu item"),
    ("a/photo", {"sample": "../etc/passwd"}, 400, "not a sample photo"),
    ("a/location", {"preset": "moon"}, 400, "not a preset place"),
    ("b/scan", {}, 400, "the other phone shows no QR code yet"),
    ("c/text", {"text": "hello"}, 404, None),
])
def test_a_pane_action_that_cannot_be_done_says_why_and_pushes_nothing(sandbox, browser_session, path, body,
                                                                       status, error):
    before = inbox_count(sandbox)
    response = browser_session.post(f"{sandbox.url}/sandbox/api/{path}", json=body, timeout=5)
    assert response.status_code == status
    if error:
        assert response.json() == {"error": error}
    assert inbox_count(sandbox) == before


def test_a_post_without_the_page_s_csrf_token_is_refused(sandbox):
    response = requests.post(sandbox.url + "/sandbox/api/a/text", json={"text": "hello"}, timeout=5)
    assert response.status_code == 400


def test_a_text_goes_to_the_real_webhook_encrypted_and_its_answer_shows_in_the_pane(sandbox, browser_session):
    before = inbox_count(sandbox)
    assert browser_session.post(sandbox.url + "/sandbox/api/a/text", json={"text": "你好"}, timeout=10).ok
    assert inbox_count(sandbox) == before + 1

    def pane():
        return browser_session.get(sandbox.url + "/sandbox/api/a/messages", timeout=5).json()["messages"]

    messages = wait_until(lambda: (lambda shown: shown if len(shown) > 1 else None)(pane()), timeout=15)
    assert messages[0] == {**messages[0], "from": "me", "text": "你好"}
    assert [m["from"] for m in messages[1:]] == ["account"]  # one answer
    assert sandbox.wechat.reply_errors == []


def test_a_taken_port_is_said_plainly(sandbox, tmp_path):
    import subprocess
    import sys

    port = sandbox.url.rsplit(":", 1)[1]
    done = subprocess.run([sys.executable, "-c", "from accident_service.cli import main; main()", "sandbox",
                           "--bind", f"127.0.0.1:{port}"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in __import__("os").environ.items()
                               if k not in launcher.REAL_CREDENTIALS and k != "APP_ENV"})
    assert done.returncode == 1
    assert f"sandbox cannot listen on 127.0.0.1:{port}" in done.stderr and "--bind" in done.stderr, done.stderr
