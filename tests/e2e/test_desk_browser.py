"""The desk in Debian's Chromium (Playwright): what an officer does all day, with the mouse and with the keyboard.

Cases come from two drivers on the WeChat emulator (tests.support.flows); the
app serves on loopback; the queue refreshes itself every second here.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from accident_service.booking.geo import nearest
from accident_service.booking.stations import active_stations
from accident_service.desk import actions
from accident_service.models import Case, CaseStatus
from tests.desk.factories import PASSWORD, add_staff, seed_desk, store_photos
from tests.support.browser import VIEWPORT, has_horizontal_scroll, screenshot, serious_violations
from tests.support.desk_day import seed_day
from tests.support.flows import GUANGZHOU_TOWER, report_until_ready
from tests.support.live import drain

A, B = "oDeskBrowserA000000000000001", "oDeskBrowserB000000000000002"


@pytest.fixture
def wechat_settings_overrides(wechat_settings_overrides):
    return {**wechat_settings_overrides, "DESK_QUEUE_REFRESH_SECONDS": 1}


@pytest.fixture
def officer(wechat_runtime, stations):
    """An officer of the station the drivers will book at: the nearest to the accident (all have 10:30 free)."""
    with wechat_runtime.unit_of_work() as session:
        station, _ = nearest(active_stations(session), *GUANGZHOU_TOWER, limit=1)[0]
        add_staff(session, wechat_runtime, "officer.wang", "officer", station.code)
        return {"username": "officer.wang", "station_id": station.id, "station_code": station.code}


def book_through_wechat(wechat, runtime) -> str:
    case = report_until_ready(wechat, runtime, A, B)
    wechat.post_text(B, "1")  # B made the case ready, so the slot list is B's
    drain(runtime)
    return case.case_no


def sign_in(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/desk/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(base_url + "/desk/")


def badge_of(page):
    return page.locator(".case-head .badge")


def press(page, *keys: str) -> None:
    """Press ``keys`` once the page's shortcuts are listening (its script runs after the page is parsed)."""
    page.wait_for_selector("html[data-shortcuts=on]", state="attached")
    for key in keys:
        page.keyboard.press(key)


def told(wechat, runtime, text: str, drivers=(A, B)) -> None:
    drain(runtime)
    for driver in drivers:
        read = wechat.messages_to(driver)
        assert any(text in message for message in read), (driver, "\n---\n".join(read))


def told_of_outcome(wechat, runtime) -> None:
    """B was found liable: each driver reads it, as a text or (past the allowance) as the card's last line.

    The officer's note is in the text only; the card's keywords hold 20 characters and the drivers are at the desk.
    """
    told(wechat, runtime, "对方负全部责任", drivers=(A,))
    told(wechat, runtime, "您负全部责任", drivers=(B,))


def told_of_retake(wechat, runtime, reason: str) -> None:
    """The driver asked reads the reason; the other reads that a retake was asked of the other driver."""
    told(wechat, runtime, reason, drivers=(A,))  # item 2, the collision point, is the reporter's photo
    told(wechat, runtime, "民警已请对方补拍照片2", drivers=(B,))


def test_an_officer_sees_a_wechat_booking_arrive_and_handles_it_with_the_mouse(
        browser_context, live_app, wechat, wechat_runtime, officer):
    seed_day(wechat_runtime, officer["station_id"])  # the rest of the morning, for a queue that looks like one
    page = browser_context.new_page()
    sign_in(page, live_app.url, officer["username"])
    page.evaluate("window.__sameDocument = true")
    case_no = book_through_wechat(wechat, wechat_runtime)
    row = page.locator(f"tr[data-case-no='{case_no}']")
    expect(row).to_be_visible(timeout=10_000)
    assert page.evaluate("window.__sameDocument === true")  # it came without a reload

    row.locator("td.col-time").click()  # the officer's place ...
    expect(row).to_have_class("queue-row badge-row-booked is-selected")
    with wechat_runtime.unit_of_work() as session:  # ... kept while a colleague changes another row
        other = session.scalars(select(Case).where(Case.case_no != case_no, Case.status == CaseStatus.BOOKED)).first()
        actions.confirm(session, actions.lock_case(session, other.case_no), staff="colleague",
                        settings=wechat_runtime.settings, now=wechat_runtime.clock.now())
    expect(page.locator(f"tr[data-case-no='{other.case_no}'] .badge")).to_have_text("已确认", timeout=10_000)
    expect(row).to_have_class("queue-row badge-row-booked is-selected")
    assert not has_horizontal_scroll(page)
    screenshot(page, "desk-queue")

    row.locator("a.case-link").click()
    page.wait_for_url(f"**/desk/cases/{case_no}")
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('.thumb img')];"
                           " return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
    assert not has_horizontal_scroll(page)
    screenshot(page, "desk-case")
    with page.expect_popup() as opened:
        page.locator("a[data-original]").first.click()
    original = opened.value
    original.wait_for_load_state()
    assert original.evaluate("document.images.length === 1 && document.images[0].naturalWidth >= 1600")
    original.close()

    page.click("form[data-action=confirm] button")
    expect(badge_of(page)).to_have_text("已确认")
    told(wechat, wechat_runtime, "已由民警确认")

    page.select_option("#retake-item", "2")
    page.fill("#retake-reason", "碰撞部位看不清")
    page.click("form[data-action=retake] button")
    expect(badge_of(page)).to_have_text("待补拍")
    told_of_retake(wechat, wechat_runtime, "碰撞部位看不清")

    page.click("form[data-action=check-in] button")
    expect(badge_of(page)).to_have_text("已签到")
    page.check("input[name=liability][value=B]")
    page.fill("#complete-note", "乙方追尾，负全责")
    page.click("form[data-action=complete] button")
    expect(badge_of(page)).to_have_text("已办结")
    told_of_outcome(wechat, wechat_runtime)


def test_the_same_run_with_the_keyboard_only(browser_context, live_app, wechat, wechat_runtime, officer):
    case_no = book_through_wechat(wechat, wechat_runtime)
    page = browser_context.new_page()
    page.goto(live_app.url + "/desk/login")
    expect(page.locator("#username")).to_be_focused()  # autofocus: typed keys land there, once it applies
    page.keyboard.type(officer["username"])
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(live_app.url + "/desk/")

    press(page, "?")
    expect(page.locator("#shortcut-help")).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    expect(page.locator(f"tr[data-case-no='{case_no}']")).to_have_class("queue-row badge-row-booked is-selected")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/desk/cases/{case_no}")

    press(page, "c")
    expect(badge_of(page)).to_have_text("已确认")
    press(page, "r")  # the retake form: item, reason, deadline, send
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Tab")
    page.keyboard.type("碰撞部位反光")
    page.keyboard.press("Enter")
    expect(badge_of(page)).to_have_text("待补拍")
    press(page, "i")
    expect(badge_of(page)).to_have_text("已签到")
    press(page, "o")  # the outcome: liability (arrows choose), the note, send
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")
    page.keyboard.type("乙方变道未让行")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(badge_of(page)).to_have_text("已办结")
    told(wechat, wechat_runtime, "已由民警确认")
    told_of_retake(wechat, wechat_runtime, "碰撞部位反光")
    told_of_outcome(wechat, wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        case = session.scalar(select(Case).where(Case.case_no == case_no))
        assert (case.status, case.liability, case.handled_by) == (CaseStatus.COMPLETED, "B", officer["username"])


def test_a_cross_site_post_is_refused_and_another_stations_officer_gets_404(browser_context, chromium, live_app,
                                                                             wechat_runtime):
    desk = seed_desk(wechat_runtime)
    case_url = f"{live_app.url}/desk/cases/{desk['case_no']}"
    page = browser_context.new_page()
    sign_in(page, live_app.url, "th")
    # Another site's page posting to the desk: no token (and SameSite keeps the cookie home besides).
    page.set_content(f"<form method=post action='{case_url}/confirm'><input name=expected_version value=2>"
                     "<button>go</button></form>")
    with page.expect_navigation() as landed:
        page.click("button")
    assert landed.value.status == 400 and "表单已过期或来源不明" in page.content()
    # The officer's own session without the form's token: refused all the same.
    refused = page.request.post(f"{case_url}/confirm", form={"expected_version": "2"}, max_redirects=0)
    assert refused.status == 400 and "表单已过期或来源不明" in refused.text()
    with wechat_runtime.unit_of_work() as session:
        assert session.scalar(select(Case.status).where(Case.id == desk["case_id"])) is CaseStatus.BOOKED

    other = chromium.new_context(viewport=VIEWPORT)
    try:
        elsewhere = other.new_page()
        sign_in(elsewhere, live_app.url, "yx")  # GZ-YX's officer
        assert elsewhere.goto(case_url).status == 404
        token = elsewhere.locator("input[name=csrf_token]").first.get_attribute("value")
        attempt = elsewhere.request.post(f"{case_url}/confirm", form={"csrf_token": token, "expected_version": "2"},
                                         max_redirects=0)
        assert attempt.status == 404
        assert elsewhere.goto(f"{case_url}/sheet").status == 404
    finally:
        other.close()


def test_axe_finds_no_serious_or_critical_violation(browser_context, live_app, wechat_runtime):
    desk = seed_desk(wechat_runtime)
    store_photos(wechat_runtime, desk["case_id"])
    with wechat_runtime.unit_of_work() as session:  # the longest reason without a space (a pasted link): it wraps in
        # the audit trail (an officer's pass: the page grew to 1,407 px at 1,280, both languages)
        actions.request_retake(session, actions.lock_case(session, desk["case_no"]), item=4, staff="th",
                               reason="https://example.invalid/" + "x" * 176, settings=wechat_runtime.settings,
                               now=wechat_runtime.clock.now())
    page = browser_context.new_page()
    found = {}
    page.goto(live_app.url + "/desk/login")
    found["login"] = serious_violations(page)
    screenshot(page, "desk-login")
    sign_in(page, live_app.url, "th")
    for name, path in (("queue", "/desk/"), ("case", f"/desk/cases/{desk['case_no']}"),
                       ("sheet", f"/desk/cases/{desk['case_no']}/sheet")):
        page.goto(live_app.url + path)
        page.wait_for_load_state("load")
        found[name] = serious_violations(page)
        assert not has_horizontal_scroll(page), name
        assert buttons_named_otherwise(page) == [], name
    screenshot(page, "desk-sheet")
    printed = page.pdf(format="A4", print_background=True)  # the sheet as printed: one A4 page
    assert len(re.findall(rb"/Type\s*/Page[^s]", printed)) == 1
    assert found == {"login": [], "queue": [], "case": [], "sheet": []}


def buttons_named_otherwise(page) -> list[str]:
    """The visible buttons whose accessible name does not hold their visible text (WCAG 2.5.3, label in name: a
    voice-control user says what they see; acceptance pass: "English" was named "切换到英文"). axe does not check
    it."""
    buttons = page.locator("button:visible, input[type=submit]:visible")
    texts = {(buttons.nth(n).inner_text() or buttons.nth(n).get_attribute("value") or "").strip()
             for n in range(buttons.count())}
    return sorted(text for text in texts
                  if text and page.get_by_role("button", name=text, exact=False).count() == 0)
