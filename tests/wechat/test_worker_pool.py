"""The web process's hand-off: after a message, the thread takes on its driver's next one, and only theirs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from accident_service.models import InboundMessage, WorkStatus
from accident_service.wechat.worker_pool import _drivers_next
from tests.wechat.test_inbox import push


def test_the_next_message_is_the_same_drivers_earliest_one_pending_and_due(runtime, clock):
    first = push(runtime, "oNextA")
    push(runtime, "oNextB")  # another driver's: never taken on here
    done_already = push(runtime, "oNextA")
    deferred = push(runtime, "oNextA")
    due = push(runtime, "oNextA")
    later = push(runtime, "oNextA")
    with runtime.unit_of_work() as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == done_already)
                        .values(status=WorkStatus.DONE))
        session.execute(update(InboundMessage).where(InboundMessage.id == deferred)
                        .values(next_attempt_at=clock.now() + timedelta(minutes=1)))

    assert _drivers_next(runtime, first) == due  # not the done one, not the one deferred by the intake limit
    assert _drivers_next(runtime, due) == later
    assert _drivers_next(runtime, later) is None
    clock.advance(minutes=2)
    assert _drivers_next(runtime, first) == deferred  # due now, and earlier than the others
