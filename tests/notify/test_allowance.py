"""The ledger of what the platform allows us to send a person (notify/allowance.py), on the test's database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from accident_service.models import WechatAllowance
from accident_service.notify import allowance


def record(runtime, action: str, at) -> bool:
    with runtime.unit_of_work() as session:
        return allowance.record_action(session, "oLedger", action, at)


def test_recording_an_action_says_whether_it_granted_an_allowance(runtime, clock):
    """The answer decides whether what waited for the person goes out now (wechat.processing): it must be
    right on every database (on PostgreSQL an INSERT's row count read -1, and every answer was False)."""
    now = clock.now()
    assert record(runtime, "message", now) is True  # the first action
    assert record(runtime, "message", now) is True  # the same moment again (a retried push): still theirs
    assert record(runtime, "click", now + timedelta(seconds=5)) is True  # a later one replaces it
    assert record(runtime, "message", now) is False  # an older one, processed late, changes nothing
    with runtime.unit_of_work() as session:
        granted_by, granted_at = session.execute(select(WechatAllowance.granted_by, WechatAllowance.granted_at)
                                                 .where(WechatAllowance.openid == "oLedger")).one()
    assert granted_by == "click" and granted_at == now + timedelta(seconds=5)


def test_events_that_are_no_action_grant_nothing(runtime, clock):
    assert record(runtime, None, clock.now()) is False
    assert record(runtime, "unsubscribe", clock.now()) is False


def sends_left(runtime) -> int:
    with runtime.unit_of_work() as session:
        return allowance.window_of(session, "oLedger")[0]


def test_a_send_given_back_returns_to_the_allowance_it_came_from_only(runtime, clock):
    """Never beyond what that allowance allowed, and not to one a newer action granted since, even an action
    received before the send and processed after it: that one is whole, and one more would be a send the
    platform refuses (45047)."""
    now = clock.now()
    record(runtime, "message", now)
    with runtime.unit_of_work() as session:
        taken = allowance.spend(session, "oLedger", now + timedelta(seconds=2))
    assert (taken.granted_at, taken.sends) == (now, 5)
    with runtime.unit_of_work() as session:
        assert allowance.refund(session, taken, now + timedelta(seconds=2)) is True
    assert sends_left(runtime) == 5
    with runtime.unit_of_work() as session:
        assert allowance.refund(session, taken, now + timedelta(seconds=2)) is False  # given back once only
    assert sends_left(runtime) == 5

    with runtime.unit_of_work() as session:
        taken = allowance.spend(session, "oLedger", now + timedelta(seconds=3))
    record(runtime, "click", now + timedelta(seconds=1))  # received before that send, processed after it
    with runtime.unit_of_work() as session:
        assert allowance.refund(session, taken, now + timedelta(seconds=4)) is False
    assert sends_left(runtime) == 3
