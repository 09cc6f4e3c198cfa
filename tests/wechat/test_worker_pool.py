"""The web process's hand-off: after a message, the thread sends what is due for the people it wrote to, and only
that, then takes on its driver's next message, and only theirs."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from accident_service import outbox
from accident_service.db import DatabaseUnavailable
from accident_service.logs import current_request_id, log_context
from accident_service.models import InboundMessage, WorkStatus
from accident_service.notify.dispatch import release_held
from accident_service.wechat import inbox, worker_pool
from accident_service.wechat.processing import run_drivers_messages
from accident_service.wechat.worker_pool import _process_then_follow
from tests.notify.test_dispatch import acted, add, load
from tests.support.live import wait_until
from tests.wechat.test_inbox import failing_with, push, record_and_finish
from tests.wechat.test_inbox import load as load_message


def test_the_drivers_next_message_is_their_earliest_unfinished_one_once_due(runtime, clock):
    first = push(runtime, "oNextA")
    someone_elses = push(runtime, "oNextB")  # another driver's: never taken on here
    done_already = push(runtime, "oNextA")
    deferred = push(runtime, "oNextA")
    later = push(runtime, "oNextA")
    with runtime.unit_of_work() as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == done_already)
                        .values(status=WorkStatus.DONE))
        session.execute(update(InboundMessage).where(InboundMessage.id == deferred)
                        .values(next_attempt_at=clock.now() + timedelta(minutes=1)))

    def next_of_the_driver() -> list[int]:
        return inbox.claim_due(runtime, "w1", limit=1, openid="oNextA")

    assert next_of_the_driver() == [first]
    assert next_of_the_driver() == []  # one message per driver at a time
    assert inbox.process(runtime, first, "w1", record_and_finish) == "done"
    assert next_of_the_driver() == []  # the one deferred by the intake limit holds the later one back
    clock.advance(minutes=2)
    assert next_of_the_driver() == [deferred]  # due now: the earliest unfinished, not the done one
    assert inbox.process(runtime, deferred, "w1", record_and_finish) == "done"
    assert next_of_the_driver() == [later]
    assert inbox.process(runtime, later, "w1", record_and_finish) == "done"
    assert next_of_the_driver() == []
    assert load_message(runtime, someone_elses).status is WorkStatus.PENDING


def test_the_hand_off_sends_what_is_due_for_the_people_its_message_wrote_to_and_leaves_the_rest(
        wechat_runtime, wechat):
    """Another person's due notice is the scheduler's: the lane's next messages must not wait behind a backlog.
    An earlier notice to the driver goes out first, before their reply (one person's notices in order)."""
    rt = wechat_runtime
    someone_elses = add(rt, "oHandOffOther", "another person's notice", wechat=wechat)
    earlier = add(rt, "oHandOffA", "an earlier notice to the driver", wechat=wechat)
    acted(rt, wechat, "oHandOffA")
    message_id = push(rt, "oHandOffA")

    _process_then_follow(rt, "other", message_id, "oHandOffA")

    assert load_message(rt, message_id).status is WorkStatus.DONE
    assert [m["touser"] for m in wechat.sent] == ["oHandOffA", "oHandOffA"]  # the earlier notice, then the reply
    assert wechat.sent[0]["text"] == "an earlier notice to the driver" and load(rt, earlier).status is WorkStatus.DONE
    assert load(rt, someone_elses).status is WorkStatus.PENDING


def test_the_people_written_to_are_collected_inside_the_block_only(runtime):
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        outbox.enqueue(session, openid="oOutside", kind="reply", text="before", dedupe_key="t:outside", now=now)
        with outbox.recipients_written() as recipients:
            outbox.enqueue(session, openid="oOne", kind="reply", text="hi", dedupe_key="t:one", now=now)
            outbox.enqueue_many(session, [outbox.message_row(openid=openid, kind="notice", dedupe_key=f"t:{openid}",
                                                             now=now, case_id=None, language="zh",
                                                             payload={"text": "x", "template_data": {}})
                                          for openid in ("oTwo", "oThree")])
            release_held(session, "oNothingHeld", now)  # nothing released: nobody to send to
        assert recipients == {"oOne", "oTwo", "oThree"}


def test_the_hand_off_follows_the_driver_s_later_messages_only_not_a_photo_retry_its_text_overtook(
        wechat_runtime, wechat, clock):
    """A photo waiting out a storage outage is overtaken by the driver's texts; its retry, due again, is the
    sweep's: in the text lane, other drivers' texts would wait behind its download."""
    rt = wechat_runtime
    photo = push(rt, "oOvertook", image=True)
    assert inbox.claim_due(rt, "w1") == [photo]
    outage = inbox.RetryLater("storage unavailable", keep_trying_until=clock.now() + timedelta(hours=2))
    assert inbox.process(rt, photo, "w1", failing_with(outage)) == "retry"
    first_text, second_text = push(rt, "oOvertook"), push(rt, "oOvertook")
    clock.set(load_message(rt, photo).next_attempt_at)  # the photo's retry is due again

    _process_then_follow(rt, "other", first_text, "oOvertook")

    assert load_message(rt, first_text).status is WorkStatus.DONE
    assert load_message(rt, second_text).status is WorkStatus.DONE  # sent after it: followed
    waiting = load_message(rt, photo)
    assert (waiting.status, waiting.attempts) == (WorkStatus.PENDING, 1)  # not tried again here


def test_a_thread_takes_on_at_most_its_follow_of_the_driver_s_next_messages(wechat_runtime):
    rt = wechat_runtime
    messages = [push(rt, "oFollowBound") for _ in range(4)]

    assert run_drivers_messages(rt, "w1", messages[0], "oFollowBound", follow=2) == 3

    assert [load_message(rt, m).status for m in messages] == [WorkStatus.DONE] * 3 + [WorkStatus.PENDING]


class _PhotoLaneBusy:
    """Both photo threads held until the block ends (or ``release()``), then every lane shut down: waited for."""

    def __init__(self, runtime) -> None:
        self._runtime, self._release = runtime, threading.Event()

    def __enter__(self) -> _PhotoLaneBusy:
        lane = worker_pool._pool_for(self._runtime, "photo")
        self._busy = [lane.submit(self._release.wait, 30) for _ in range(worker_pool.LANES["photo"])]
        return self

    def release(self) -> None:
        self._release.set()

    def __exit__(self, *exc_info) -> None:
        self._release.set()
        worker_pool.shutdown_pools()
        assert all(done.done() for done in self._busy)


def test_in_the_text_lane_a_photo_of_the_driver_goes_on_to_the_photo_lane_with_its_lease(wechat_runtime):
    """The driver's photo, sent while their text was processing, could not be claimed by its own hand-off;
    the text's thread claims it following the driver, and hands it on: other drivers' texts must not wait
    behind its download. Both photo threads are busy here, so it waits for one, still leased; a photo
    thread then takes the lease over and processes it (once: the attempt the text's thread counted)."""
    rt = wechat_runtime
    text, photo = push(rt, "oTextThenPhoto"), push(rt, "oTextThenPhoto", image=True)
    with _PhotoLaneBusy(rt):
        _process_then_follow(rt, "other", text, "oTextThenPhoto")

        assert load_message(rt, text).status is WorkStatus.DONE
        waiting = load_message(rt, photo)
        assert (waiting.status, waiting.attempts) == (WorkStatus.PROCESSING, 1)  # claimed, not tried here
    tried = load_message(rt, photo)
    assert (tried.status, tried.attempts) == (WorkStatus.DONE, 1)
    assert tried.leased_by.startswith("web-") and tried.leased_by != waiting.leased_by  # a photo thread's


def test_a_photo_handed_on_whose_lease_lapsed_while_it_waited_is_left_to_the_sweep(wechat_runtime, clock):
    """Past its lease the sweep may hold it already: the photo thread must not run it beside the sweep."""
    rt = wechat_runtime
    text, photo = push(rt, "oLapsedInQueue"), push(rt, "oLapsedInQueue", image=True)
    with _PhotoLaneBusy(rt):
        _process_then_follow(rt, "other", text, "oLapsedInQueue")
        handed_on = load_message(rt, photo)
        clock.advance(seconds=rt.settings.INBOX_LEASE_SECONDS + 1)
    left = load_message(rt, photo)
    assert (left.status, left.attempts, left.leased_by) == (WorkStatus.PROCESSING, 1, handed_on.leased_by)
    assert inbox.claim_due(rt, "sweep") == [photo]  # lapsed: the sweep's, its attempt counted


def test_the_lanes_shut_down_while_a_text_thread_hands_a_photo_on(wechat_runtime):
    """Shutting down waits for the text lane while it hands a photo on, then for the photo lane, which ran it.
    (It held the pools' lock while it waited, and the hand-on needs that lock: neither ever finished.)"""
    rt = wechat_runtime
    text, photo = push(rt, "oShutdownHandOn"), push(rt, "oShutdownHandOn", image=True)
    with _PhotoLaneBusy(rt) as photo_lane:
        worker_pool.submit_after_response(rt, text, "text", "oShutdownHandOn")
        stopping = threading.Thread(target=worker_pool.shutdown_pools, daemon=True)
        stopping.start()
        # The text is answered and its driver's photo handed on (leased by the text thread) while shutdown waits.
        wait_until(lambda: (load_message(rt, text).status, load_message(rt, photo).status) == (
            WorkStatus.DONE, WorkStatus.PROCESSING))
        photo_lane.release()
        stopping.join(timeout=20)
        assert not stopping.is_alive(), "shutting the lanes down never finished"
    assert [load_message(rt, m).status for m in (text, photo)] == [WorkStatus.DONE, WorkStatus.DONE]


def test_what_the_pool_logs_for_a_push_carries_the_push_s_request_id(wechat_runtime, wechat):
    """An operator following a push by its request id finds its processing too, done after the answer."""
    seen: list[tuple[str, str | None]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), current_request_id()))

    recorder, logger = Recorder(logging.WARNING), logging.getLogger("accident_service")
    logger.addHandler(recorder)
    wechat.inject_error("message/custom/send", 40003, times=None)  # each reply fails for good: a warning
    message_id = push(wechat_runtime, "oLoggedAfterAnswer")
    push(wechat_runtime, "oLoggedAfterAnswer")  # their next message, in a push of its own: the thread takes it on
    try:
        with log_context("push-42"):
            worker_pool.submit_after_response(wechat_runtime, message_id, "text", "oLoggedAfterAnswer")
        wait_until(lambda: sum("not delivered" in line for line, _ in seen) == 2)
    finally:
        logger.removeHandler(recorder)
    # The first reply's line under the push's id; the next message's not (its own push's id is not known here).
    assert [request_id for line, request_id in seen if "not delivered" in line] == ["push-42", None]


@pytest.mark.parametrize(("error", "lines"), [
    (DatabaseUnavailable(), [("WARNING", False)]),
    (RuntimeError("a bug"), [("ERROR", True)]),
])
def test_an_outage_met_by_an_inline_lane_is_one_line_a_bug_its_traceback(wechat_runtime, monkeypatch, caplog, error,
                                                                       lines):
    """Acceptance pass: each message a lane held during a database blip wrote its whole traceback into the web's log,
    where the scheduler's jobs and the inbox write one line for the same outage."""
    from accident_service.wechat import processing

    def failing(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(processing, "run_drivers_messages", failing)
    with caplog.at_level(logging.WARNING, logger="accident_service.wechat.worker_pool"):
        _process_then_follow(wechat_runtime, "other", 1, "oOutageOnce")
    assert [(record.levelname, record.exc_info is not None) for record in caplog.records
            if record.name == "accident_service.wechat.worker_pool"] == lines
