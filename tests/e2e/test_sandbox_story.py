"""The sandbox as a newcomer meets it: `accident-service sandbox`, the URL it prints, two phones and the desk.

The command runs as its own process (its emulators, the service, the scheduler), on a fresh data
directory; Chromium plays both drivers on the page it prints and the demo officer on the desk.
Every step waits for the account's answer before the next, as a driver at the roadside does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from accident_service.sandbox.launcher import REAL_CREDENTIALS
from tests.support.browser import has_horizontal_scroll, screenshot, serious_violations

CLI = [sys.executable, "-c", "from accident_service.cli import main; main()"]
PRINTED = re.compile(r"open (http://\S+)\s+desk: (http://\S+)\s+username: (\S+)\s+password: (\S+)")
START_SECONDS = 60  # a bound for a busy machine, not a speed requirement


class Printed:
    """The command's output, read as it comes (a thread drains the pipe so the process never blocks)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            self.text += line


@pytest.fixture
def sandbox_process(tmp_path):
    """`accident-service sandbox --bind 127.0.0.1:0` in a fresh directory; SIGTERM (then kill) at the end."""
    environ = {k: v for k, v in os.environ.items()
               if k not in REAL_CREDENTIALS and k not in ("APP_ENV", "DATA_DIR", "DATABASE_URL", "STORAGE_URL")}
    process = subprocess.Popen([*CLI, "sandbox", "--bind", "127.0.0.1:0"], cwd=tmp_path, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = Printed(process)
    deadline = time.monotonic() + START_SECONDS
    found = None
    while found is None and time.monotonic() < deadline and process.poll() is None:
        found = PRINTED.search(printed.text)
        time.sleep(0.1)
    try:
        assert found, f"the sandbox printed no URL and credentials:\n{printed.text[-3000:]}"
        assert (tmp_path / "var" / "sandbox").is_dir()  # the embedded defaults, under the directory it was run in
        yield {"url": found.group(1), "desk_url": found.group(2), "username": found.group(3),
               "password": found.group(4), "output": printed}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def pane(page, key: str):
    return page.locator(f"#phone-{key}")


def answered(page, key: str, action) -> None:
    """Do ``action`` in a pane and wait until the account has answered it (a new message after the driver's)."""
    section = pane(page, key)
    before = section.locator(".chat > li:not(.me)").count()
    action(section)
    expect(section).not_to_have_attribute("aria-busy", "true")
    expect(section.locator(".error")).to_be_empty()
    deadline = time.monotonic() + 20
    while section.locator(".chat > li:not(.me)").count() <= before:
        assert time.monotonic() < deadline, section.locator(".chat").inner_text()
        page.wait_for_timeout(100)


def say(page, key: str, text: str) -> None:
    def typed(section):
        section.locator("input[name=text]").fill(text)
        section.locator("input[name=text]").press("Enter")
    answered(page, key, typed)


def photo(page, key: str, sample: str) -> None:
    def sent(section):
        if section.locator("details").get_attribute("open") is None:
            section.locator("details summary").click()
        section.locator(f"button[data-sample={sample}]").click()
    answered(page, key, sent)


def test_the_readme_run_command_serves_the_whole_story_in_a_browser(sandbox_process, browser_context, tmp_path):
    url = sandbox_process["url"]
    assert requests.get(url.rsplit("/sandbox", 1)[0] + "/healthz", timeout=5).json() == {"status": "ok"}
    page = browser_context.new_page()
    page.goto(url)
    expect(page.locator("#phone-a .menu button").first).to_be_enabled()
    assert serious_violations(page) == []

    # Driver A reports: the menu, three photos (two samples and one from the file picker), the place, plate, phone.
    answered(page, "a", lambda s: s.get_by_role("button", name="事故快处").click())
    photo(page, "a", "scene")
    photo(page, "a", "collision")
    picture = tmp_path / "my-plate.jpg"
    picture.write_bytes(requests.get(url + "samples/plate-a.jpg", timeout=5).content)
    answered(page, "a", lambda s: s.locator("input[type=file]").set_input_files(str(picture)))
    expect(pane(page, "a").locator(".msg.me img.photo")).to_have_count(3)
    answered(page, "a", lambda s: (s.locator("select").select_option("tower"),
                                   s.get_by_role("button", name="发送位置").click()))
    say(page, "a", "粤A12345")
    say(page, "a", "13800138000")
    qr = pane(page, "a").locator("img.qr").last
    expect(qr).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=qr.element_handle())

    # Driver B scans A's code (following the account by it), sends their plate photo, plate and phone.
    expect(pane(page, "b").locator(".follow-bar")).to_be_visible()
    answered(page, "b", lambda s: s.get_by_role("button", name="扫一扫对方二维码").click())
    expect(pane(page, "b").locator(".follow-bar")).to_be_hidden()
    photo(page, "b", "plate-b")
    say(page, "b", "粤BD12345")
    say(page, "b", "13900139000")
    say(page, "b", "1")  # B made the case ready: the slot list is B's
    for key in ("a", "b"):
        expect(pane(page, key).locator(".chat")).to_contain_text("双方现在可以撤离现场", timeout=20_000)
    case_no = re.search(r"案件号 (\S+?)。", pane(page, "b").locator(".chat").inner_text()).group(1)
    assert not has_horizontal_scroll(page)
    screenshot(page, "sandbox-phones")

    # The desk, one click away, signed in as the demo officer: the case is there; confirming it reaches both phones.
    with page.expect_popup() as opened:
        page.get_by_role("link", name=re.compile("打开民警处理台")).click()
    desk = opened.value
    desk.wait_for_url("**/desk/")
    # The queue opens on today; the slot B took may be tomorrow's (the booking lead time before local
    # midnight), so the officer finds the case as at any hour: by the other driver's plate.
    desk.get_by_role("searchbox").fill("粤BD12345")
    desk.get_by_role("searchbox").press("Enter")
    row = desk.locator(f"tr[data-case-no='{case_no}']")
    expect(row).to_be_visible()
    screenshot(desk, "sandbox-desk-search")
    row.locator("a.case-link").click()
    desk.wait_for_url(f"**/desk/cases/{case_no}")
    desk.click("form[data-action=confirm] button")
    expect(desk.locator(".case-head .badge")).to_have_text("已确认")
    for key in ("a", "b"):
        expect(pane(page, key).locator(".chat")).to_contain_text("确认", timeout=20_000)
        expect(pane(page, key).locator(".chat > li").last).to_contain_text("确认")
    screenshot(page, "sandbox-confirmed")


def test_the_printed_credentials_open_the_desk(sandbox_process, browser_context):
    page = browser_context.new_page()
    errors = []  # an outside pass met /favicon.ico's 404 as the page's one console error
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(sandbox_process["url"])
    page.wait_for_load_state("load")
    page.goto(sandbox_process["desk_url"])
    page.fill("#username", sandbox_process["username"])
    page.fill("#password", sandbox_process["password"])
    page.press("#password", "Enter")
    page.wait_for_url(sandbox_process["desk_url"])
    expect(page.locator("main")).to_contain_text("沙盒演示快处点")
    page.wait_for_load_state("load")
    assert errors == []


def test_a_pane_action_that_cannot_be_done_says_why_and_sends_nothing(sandbox_process, browser_context):
    page = browser_context.new_page()
    page.goto(sandbox_process["url"])
    section = pane(page, "b")
    section.get_by_role("button", name="扫一扫对方二维码").click()
    expect(section.locator(".error")).to_have_text("the other phone shows no QR code yet")
    expect(section.locator(".chat > li")).to_have_count(0)


def test_the_sandbox_is_refused_in_production_and_beside_real_credentials(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in REAL_CREDENTIALS and k != "APP_ENV"}
    for extra, named in (({"APP_ENV": "production"}, "APP_ENV"), ({"WECHAT_APP_SECRET": "real"}, "WECHAT_APP_SECRET"),
                         ({"SMS_SECRET_KEY": "real"}, "SMS_SECRET_KEY")):
        done = subprocess.run([*CLI, "sandbox", "--bind", "127.0.0.1:0"], cwd=tmp_path, env=base | extra,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "sandbox refused" in done.stderr and named in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or written


def test_the_readme_run_command_is_the_sandbox():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("## ", 1)[0]
    assert "accident-service sandbox" in quick_start.split("```sh", 1)[1].split("```", 1)[0]
