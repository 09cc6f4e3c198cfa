"""The WeChat API failing under a real scheduler process: busy (-1), quota (45009), an invalid token (40001), then well.

Each notification is delivered exactly once, every driver's in order, and the token is
asked for again once (shared through the database) for the one 40001.
"""

from __future__ import annotations

import time

import pytest

from accident_service.models import WorkStatus
from tests.test_jobs import enqueue_committed, have_written, logs, statuses

pytestmark = pytest.mark.slow


def test_busy_quota_and_token_errors_then_recovery_deliver_each_notice_once(start_scheduler, private_database_url,
                                                                             wechat, tmp_path):
    expected = {f"oApiFault{n}": [f"{n}-{i}" for i in range(2)] for n in range(3)}
    have_written(wechat, *expected)
    enqueue_committed(private_database_url,
                      [(openid, texts[i]) for i in range(2) for openid, texts in expected.items()])
    for errcode in (-1, 45009, 40001):  # the first three sends fail, one way each; then the platform recovers
        wechat.inject_error("message/custom/send", errcode, times=1)

    process = start_scheduler(0)
    deadline = time.monotonic() + 90  # backoffs of 5 s, and a cold start on a busy machine
    while statuses(private_database_url)[WorkStatus.DONE] < 6 and time.monotonic() < deadline:
        assert process.poll() is None, logs(tmp_path, 1)
        time.sleep(0.25)

    assert statuses(private_database_url) == {WorkStatus.DONE: 6}, logs(tmp_path, 1)
    for openid, texts in expected.items():
        assert wechat.messages_to(openid) == texts  # once each, in order
    assert len(wechat.sent) == 6
    # The first token; after 40001 normal mode hands the same one back, just issued: tried once more, not forced
    # (GatewayClient.fetch_token_pair).
    assert (wechat.stable_token_requests, wechat.force_refreshes) == (2, 0)
