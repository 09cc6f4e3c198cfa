"""The outbox: a notice is a row first, written in the caller's transaction, at most once per key."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from accident_service.models import Notification, WorkStatus
from accident_service.outbox import enqueue


def count(runtime, **where) -> int:
    with runtime.unit_of_work() as session:
        query = select(func.count()).select_from(Notification).filter_by(**where)
        return session.scalar(query)


def add(session, now, key: str = "booked:1:A", text: str = "已预约", **extra):
    return enqueue(session, openid="oDriverA", kind="booked", text=text, dedupe_key=key, now=now, **extra)


def test_new_notice_is_pending_and_due_now(runtime, clock):
    with runtime.unit_of_work() as session:
        row = add(session, clock.now(), language="en", template_data={"keyword1": "9:30"})
        assert row is not None
    with runtime.unit_of_work() as session:
        stored = session.scalar(select(Notification))
        assert stored.status is WorkStatus.PENDING and stored.attempts == 0
        assert stored.next_attempt_at == clock.now() and stored.created_at == clock.now()
        assert stored.payload == {"text": "已预约", "template_data": {"keyword1": "9:30"}}
        assert (stored.openid, stored.kind, stored.language) == ("oDriverA", "booked", "en")
        assert stored.sent_at is None and stored.lease_until is None


def test_same_key_twice_in_one_transaction_is_one_row(runtime, clock):
    with runtime.unit_of_work() as session:
        first = add(session, clock.now())
        second = add(session, clock.now(), text="duplicate")
        assert first is not None and second is None
    assert count(runtime) == 1


def test_same_key_in_one_transaction_after_a_flush_is_one_row(runtime, clock):
    with runtime.unit_of_work() as session:
        add(session, clock.now())
        session.flush()
        assert add(session, clock.now()) is None
    assert count(runtime) == 1


def test_same_key_in_separate_transactions_is_one_row(runtime, clock):
    with runtime.unit_of_work() as session:
        assert add(session, clock.now()) is not None
    clock.advance(minutes=5)
    with runtime.unit_of_work() as session:
        assert add(session, clock.now(), text="a retried job writes it again") is None
    assert count(runtime) == 1
    with runtime.unit_of_work() as session:
        assert session.scalar(select(Notification.payload))["text"] == "已预约"


def test_a_sent_notice_is_not_written_again(runtime, clock):
    with runtime.unit_of_work() as session:
        add(session, clock.now())
    with runtime.unit_of_work() as session:
        session.scalar(select(Notification)).status = WorkStatus.DONE
    with runtime.unit_of_work() as session:
        assert add(session, clock.now()) is None
    assert count(runtime) == 1 and count(runtime, status=WorkStatus.PENDING) == 0


def test_different_keys_are_different_rows(runtime, clock):
    with runtime.unit_of_work() as session:
        add(session, clock.now(), key="booked:1:A")
        add(session, clock.now(), key="booked:1:B")
    assert count(runtime) == 2


def test_rolled_back_change_leaves_no_notice(runtime, clock):
    with pytest.raises(RuntimeError):
        with runtime.unit_of_work() as session:
            add(session, clock.now())
            session.flush()
            raise RuntimeError("the booking failed")
    assert count(runtime) == 0
    with runtime.unit_of_work() as session:  # the key is free again
        assert add(session, clock.now()) is not None


def test_a_notice_about_a_case_is_stored_as_its_facts(runtime, clock):
    facts = {"case_no": "20261125-ABCDE", "fingerprint": "0123456789abcdef"}
    with runtime.unit_of_work() as session:
        assert enqueue(session, openid="oDriverA", kind="expired", notice=facts, dedupe_key="expired:1:A",
                       now=clock.now(), language="en") is not None
    with runtime.unit_of_work() as session:
        assert session.scalar(select(Notification.payload)) == {"notice": facts}


@pytest.mark.parametrize("content", [{}, {"text": "已预约", "notice": {"case_no": "X"}}], ids=["neither", "both"])
def test_a_message_is_its_text_or_a_notice_s_facts_not_both(runtime, clock, content):
    with runtime.unit_of_work() as session:
        with pytest.raises(ValueError):
            enqueue(session, openid="oDriverA", kind="booked", dedupe_key="booked:1:A", now=clock.now(), **content)
    assert count(runtime) == 0
