"""The sandbox launcher and its phones' JSON: refusals, the seed, and bad input that changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def test_the_phones_openids_are_masked_in_the_logs_as_real_ones_are(sandbox):
    """An operator's pass found "oSandboxDriverA" whole in urllib3's DEBUG lines: not of the platform's shape."""
    from accident_service.logs import mask_personal_data
    from accident_service.sandbox.phones import EXTENSION_KEY as PHONES

    for phone in sandbox.app.extensions[PHONES].phones.values():
        line = f"GET /cgi-bin/user/info?access_token=x&openid={phone.openid}&lang=zh_CN"
        assert phone.openid not in mask_personal_data(line)


def run_sandbox_command(bind: str, cwd) -> subprocess.CompletedProcess:
    """``accident-service sandbox --bind BIND`` as a process, without the credentials that would refuse it."""
    return subprocess.run([sys.executable, "-c", "from accident_service.cli import main; main()", "sandbox",
                           "--bind", bind], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in launcher.REAL_CREDENTIALS and k not in {"APP_ENV", "BIND"}})


def test_a_taken_port_is_said_plainly(sandbox, tmp_path):
    port = sandbox.url.rsplit(":", 1)[1]
    done = run_sandbox_command(f"127.0.0.1:{port}", tmp_path)
    assert done.returncode == 1
    assert f"sandbox cannot listen on 127.0.0.1:{port}: Address already in use; choose another with --bind" \
        in done.stderr, done.stderr


def test_an_address_not_of_this_machine_is_said_as_the_system_says_it(tmp_path):
    done = run_sandbox_command("192.0.2.1:8000", tmp_path)  # TEST-NET-1: never a local address
    assert done.returncode == 1 and done.stdout == ""
    assert "sandbox cannot listen on 192.0.2.1:8000: Cannot assign requested address" in done.stderr, done.stderr
    assert "in use" not in done.stderr and "choose another" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("bind", ["127.0.0.1:70000", "127.0.0.1:99999", "127.0.0.1:abc", ":8000",
                                  "unix:/tmp/sandbox.sock"])
def test_a_bind_serve_would_refuse_is_refused_by_the_same_rule_before_anything_starts(bind, tmp_path):
    done = run_sandbox_command(bind, tmp_path)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.startswith("configuration error: BIND: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "unix:PATH" not in done.stderr  # serve's other forms are no cure here (an outside pass was offered one)
    assert not (tmp_path / "var").exists()  # no data directory: nothing started


@pytest.mark.parametrize("bind, address", [("127.0.0.1:0", ("127.0.0.1", 0)), ("localhost", ("localhost", 8000)),
                                           ("[::1]:8080", ("::1", 8080)), ("0.0.0.0:65535", ("0.0.0.0", 65535))])
def test_a_bind_serve_takes_is_the_sandbox_s_host_and_port(bind, address):
    assert launcher.listen_address(bind) == address
