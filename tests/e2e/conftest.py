"""End-to-end: the app on a real loopback server, the WeChat emulator, stations from the example file."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from accident_service.booking.slots import generate_slots
from accident_service.booking.station_file import load_station_file
from accident_service.booking.stations import import_stations

EXAMPLE_STATIONS = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"
BROWSER_WAIT_MS = 10_000  # a page's action or expectation, with Chromium and the app on two busy cores


@pytest.fixture
def stations(wechat_runtime, clock):
    with wechat_runtime.unit_of_work() as session:
        import_stations(session, load_station_file(EXAMPLE_STATIONS))
        generate_slots(session, start_date=date(2026, 11, 25), days=7, now=clock.now())


@pytest.fixture(scope="module")
def chromium():
    """One headless Debian Chromium per module (its event loop ends with it); each test has its own context."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def browser_context(chromium):
    from playwright.sync_api import expect

    from tests.support.browser import VIEWPORT

    context = chromium.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id="Asia/Shanghai")
    context.set_default_timeout(BROWSER_WAIT_MS)
    expect.set_options(timeout=BROWSER_WAIT_MS)  # expect() keeps its own default (5 s) otherwise
    yield context
    context.close()
