"""Tokens as the platform issues them (WECHAT.md §4): cgi-bin/token and cgi-bin/stable_token."""

from __future__ import annotations

import requests

from accident_service.sandbox.emulator import WeChatEmulator
from tests.sandbox.calls import get_token, send_text, stable_token, token_works
from tests.sandbox.conftest import APPID, SECRET, PlatformClock

TOKEN_QUERY = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}


# -- cgi-bin/token ---------------------------------------------------------------

def test_token_is_issued_and_counted(emulator: WeChatEmulator) -> None:
    result = get_token(emulator)

    assert result["expires_in"] == 7200
    assert 0 < len(result["access_token"]) <= 512
    assert emulator.token_requests == 1


def test_wrong_secret_or_appid_is_refused(emulator: WeChatEmulator) -> None:
    assert get_token(emulator, secret="wrong")["errcode"] == 40125
    wrong_app = requests.get(emulator.api_base_url + "token", timeout=5, params={**TOKEN_QUERY, "appid": "wx-other"})
    assert wrong_app.json()["errcode"] == 40013
    assert emulator.token_requests == 2


def test_every_token_call_issues_a_new_token_and_the_old_one_lasts_the_grace(
        emulator: WeChatEmulator, platform_clock: PlatformClock) -> None:
    first = get_token(emulator)["access_token"]
    second = get_token(emulator)["access_token"]
    assert first != second

    platform_clock.advance(299)
    assert (token_works(emulator, first), token_works(emulator, second)) == (0, 0)
    platform_clock.advance(2)
    assert (token_works(emulator, first), token_works(emulator, second)) == (40001, 0)


def test_expired_unknown_and_missing_tokens(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.post_text("o-user", "hello")
    emulator.expire_tokens()

    assert send_text(emulator, token)["errcode"] == 42001
    assert send_text(emulator, "made-up")["errcode"] == 40001
    assert send_text(emulator, "")["errcode"] == 41001
    assert emulator.sent == []
    assert emulator.allowance("o-user").remaining == 5  # calls refused for their token use no allowance


def test_tokens_expire_after_7200_seconds(emulator: WeChatEmulator, platform_clock: PlatformClock) -> None:
    token = get_token(emulator)["access_token"]

    platform_clock.advance(7200)
    assert token_works(emulator, token) == 0
    platform_clock.advance(1)
    assert token_works(emulator, token) == 42001


def test_token_calls_are_limited_to_2000_a_day(emulator: WeChatEmulator, platform_clock: PlatformClock) -> None:
    answers = [emulator.handle("GET", "token", TOKEN_QUERY, b"") for _ in range(2001)]

    assert [a.errcode for a in answers[-2:]] == [None, 45009]  # a token (no errcode), then the quota error
    platform_clock.advance(24 * 3600)
    assert "access_token" in get_token(emulator)


# -- cgi-bin/stable_token ---------------------------------------------------------

def test_stable_token_normal_mode_returns_the_current_token(emulator: WeChatEmulator,
                                                            platform_clock: PlatformClock) -> None:
    first = stable_token(emulator)
    platform_clock.advance(1000)
    again = stable_token(emulator, force_refresh=False)

    assert first["expires_in"] == 7200 and 0 < len(first["access_token"]) <= 512
    assert again == {"access_token": first["access_token"], "expires_in": 6200}
    assert emulator.stable_token_requests == 2 and emulator.token_requests == 0


def test_stable_token_is_separate_from_cgi_bin_token_and_both_work(emulator: WeChatEmulator,
                                                                   platform_clock: PlatformClock) -> None:
    stable = stable_token(emulator)["access_token"]
    plain = get_token(emulator)["access_token"]
    newer_plain = get_token(emulator)["access_token"]  # retires `plain` after its grace, not `stable`
    platform_clock.advance(301)

    assert [token_works(emulator, t) for t in (plain, newer_plain, stable)] == [40001, 0, 0]
    newer_stable = stable_token(emulator, force_refresh=True)["access_token"]  # revokes `stable` only
    assert [token_works(emulator, t) for t in (newer_plain, stable, newer_stable)] == [0, 40001, 0]


def test_stable_token_rotates_in_its_last_five_minutes_and_the_old_one_works_until_it_expires(
        emulator: WeChatEmulator, platform_clock: PlatformClock) -> None:
    old = stable_token(emulator)["access_token"]
    platform_clock.advance(7200 - 301)
    assert stable_token(emulator) == {"access_token": old, "expires_in": 301}

    platform_clock.advance(1)
    rotated = stable_token(emulator)

    assert rotated["access_token"] != old and rotated["expires_in"] == 7200
    assert stable_token(emulator)["access_token"] == rotated["access_token"]
    assert token_works(emulator, old) == 0  # both work during the handover
    platform_clock.advance(301)
    assert (token_works(emulator, old), token_works(emulator, rotated["access_token"])) == (42001, 0)


def test_force_refresh_invalidates_the_old_token_at_once(emulator: WeChatEmulator) -> None:
    old = stable_token(emulator)["access_token"]

    new = stable_token(emulator, force_refresh=True)

    assert new["access_token"] != old and new["expires_in"] == 7200
    assert token_works(emulator, old) == 40001
    assert token_works(emulator, new["access_token"]) == 0
    assert emulator.force_refreshes == 1


def test_force_refresh_within_30_seconds_does_not_refresh(emulator: WeChatEmulator,
                                                          platform_clock: PlatformClock) -> None:
    first = stable_token(emulator, force_refresh=True)["access_token"]
    platform_clock.advance(29)

    too_soon = stable_token(emulator, force_refresh=True)

    assert too_soon == {"access_token": first, "expires_in": 7200 - 29}
    assert token_works(emulator, first) == 0
    platform_clock.advance(1)
    assert stable_token(emulator, force_refresh=True)["access_token"] != first
    assert emulator.force_refreshes == 2


def test_force_refresh_is_limited_to_20_a_day(emulator: WeChatEmulator, platform_clock: PlatformClock) -> None:
    for _ in range(20):
        assert "access_token" in stable_token(emulator, force_refresh=True)
        platform_clock.advance(30)

    refused = stable_token(emulator, force_refresh=True)

    assert refused["errcode"] == 45009
    assert "access_token" in stable_token(emulator)  # normal mode still answers
    platform_clock.advance(24 * 3600)
    assert "access_token" in stable_token(emulator, force_refresh=True)
    assert emulator.force_refreshes == 21


def test_stable_token_refuses_bad_requests(emulator: WeChatEmulator) -> None:
    url = emulator.api_base_url + "stable_token"

    assert requests.get(url, params=TOKEN_QUERY, timeout=5).json()["errcode"] == 43002
    assert requests.post(url, data=b"{nope", timeout=5).json()["errcode"] == 47001
    assert stable_token(emulator, force_refresh="true")["errcode"] == 47001
    assert stable_token(emulator, grant_type="password")["errcode"] == 40002
    assert stable_token(emulator, appid="wx-other")["errcode"] == 40013
    assert stable_token(emulator, secret="wrong")["errcode"] == 40125
