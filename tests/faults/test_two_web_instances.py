"""Two web instances (gunicorn processes, as on two hosts) on one database, both processing inline.

Each push reaches both instances at once (the platform's retry can land on another host):
it is stored once, processed once and answered once.
"""

from __future__ import annotations

import threading

import pytest

from accident_service.messages import text as catalogue_text
from tests.conftest import WECHAT_APPID, WECHAT_SECRET, WECHAT_TOKEN
from tests.faults.conftest import Push, column, gunicorn, web_env
from tests.support.live import wait_until

pytestmark = pytest.mark.slow
DRIVERS, PUSHES_PER_DRIVER = 4, 2


def inbox_statuses(database_url: str) -> list[str]:
    return sorted(column(database_url, "SELECT status FROM inbound_message"))


def work_under_way(database_url: str) -> int:
    """Pushes and notices not finished yet (pending or leased)."""
    [count] = column(database_url, "SELECT (SELECT count(*) FROM inbound_message WHERE status IN ('pending', "
                                   "'processing')) + (SELECT count(*) FROM notification WHERE status IN "
                                   "('pending', 'processing'))")
    return count


def test_each_push_is_stored_processed_and_answered_once_across_two_instances(private_database_url, wechat, tmp_path):
    env = web_env(private_database_url, tmp_path, INBOX_PROCESS_INLINE="true", WECHAT_TOKEN=WECHAT_TOKEN,
                  WECHAT_APP_ID=WECHAT_APPID, WECHAT_APP_SECRET=WECHAT_SECRET,
                  WECHAT_API_BASE_URL=wechat.api_base_url)
    with gunicorn(env, tmp_path / "a.log", workers=1) as host_a, gunicorn(env, tmp_path / "b.log", workers=1) as host_b:
        pushes = [Push(f"oTwoHosts{d}", "帮助", 630_000 + d * 10 + n, token=WECHAT_TOKEN)
                  for n in range(PUSHES_PER_DRIVER) for d in range(DRIVERS)]
        for push in pushes:  # posted here, not through the emulator: the platform saw them all the same
            wechat.note_user_activity(push.openid, action_key=push.msg_id)
        answers: list[tuple[int, str]] = []

        def post(push: Push, host: str) -> None:
            answers.append(push.post(host))

        for push in pushes:  # the same push to both hosts at once
            both = [threading.Thread(target=post, args=(push, host)) for host in (host_a, host_b)]
            for thread in both:
                thread.start()
            for thread in both:
                thread.join(timeout=20)
        assert answers == [(200, "success")] * 2 * len(pushes)
        wechat.wait_for_sent(lambda m: m["touser"].startswith("oTwoHosts"), timeout=60, count=len(pushes))
        # A duplicate would come from work still under way: wait until none is left (a fixed second could end
        # before it on a slow machine), then stop both instances before counting.
        assert wait_until(lambda: work_under_way(private_database_url) == 0, timeout=60)

    help_text = catalogue_text("conv.help", "zh")
    for driver in range(DRIVERS):
        assert wechat.messages_to(f"oTwoHosts{driver}") == [help_text] * PUSHES_PER_DRIVER
    assert inbox_statuses(private_database_url) == ["done"] * len(pushes)
    assert wechat.stable_token_requests == 1  # one access token, shared by both instances
