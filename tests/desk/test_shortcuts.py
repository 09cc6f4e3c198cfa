"""The desk's keyboard shortcuts in Debian's Chromium (Playwright): a key whose action the case does not offer now
says so (acceptance pass: "c" on a case that could not be confirmed did nothing, silently)."""

from __future__ import annotations

from playwright.sync_api import expect

from accident_service.desk import actions
from accident_service.messages import text
from tests.desk.factories import PASSWORD, seed_desk


def test_a_key_for_an_action_the_case_does_not_offer_says_so_politely_without_a_page_load(
        browser_context, live_app, wechat_runtime):
    desk = seed_desk(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:  # confirmed already: "c" has nothing to do
        actions.confirm(session, actions.lock_case(session, desk["case_no"]), staff="colleague",
                        settings=wechat_runtime.settings, now=wechat_runtime.clock.now())
    page = browser_context.new_page()
    page.goto(f"{live_app.url}/desk/login?next=/desk/cases/{desk['case_no']}")
    page.fill("#username", "th")
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"**/desk/cases/{desk['case_no']}")
    page.wait_for_selector("html[data-shortcuts=on]", state="attached")
    page.evaluate("window.__sameDocument = true")

    page.keyboard.press("c")
    said = page.get_by_role("status").filter(has_text=text("desk.keys.confirm", "zh"))
    expect(said).to_have_text(text("desk.keys.unavailable", "zh", action=text("desk.keys.confirm", "zh")))
    expect(said).to_have_attribute("aria-live", "polite")
    expect(page.locator(".case-head .badge")).to_have_text(text("desk.status.confirmed", "zh"))
    assert page.evaluate("window.__sameDocument === true")  # no page load, no form sent
    page.keyboard.press("r")  # a key that acts (the retake form): what "c" said goes (acceptance pass: it stayed)
    expect(page.locator("#shortcut-status")).to_have_text("")
    expect(page.locator("#retake-item")).to_be_focused()
    page.keyboard.press("Escape")

    page.keyboard.press("u")  # the queue, no row chosen yet: "c" asks for one
    page.wait_for_url(f"{live_app.url}/desk/")
    page.wait_for_selector("html[data-shortcuts=on]", state="attached")
    page.keyboard.press("c")
    expect(page.locator("#shortcut-status")).to_have_text(text("desk.keys.no_case", "zh"))
