"""The durable inbox: leases, crash recovery, per-driver order, retries, poison messages.

The inbox is exercised directly with trivial handlers (an audit row plus
``inbox.finish`` in one unit of work), so these tests do not depend on the
conversation. Time only moves through the ControlledClock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from accident_service.models import AuditEvent, InboundMessage, WorkStatus
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from accident_service.wechat import inbox
from accident_service.wechat.xml_gate import parse_inbound

LEASE_SECONDS = 60
MAX_ATTEMPTS = 3


@pytest.fixture
def settings_overrides(settings_overrides):
    return {**settings_overrides, "INBOX_LEASE_SECONDS": LEASE_SECONDS, "INBOX_MAX_ATTEMPTS": MAX_ATTEMPTS}


# --- helpers ---------------------------------------------------------------

_next_msg_id = iter(range(10_000, 10**9))


def push(runtime, openid: str = "oDriverA", *, msg_id: int | None = None, image: bool = False) -> int:
    """Store a text message (or a photo) the way the webhook does; returns the inbox row id."""
    msg_id = msg_id if msg_id is not None else next(_next_msg_id)
    body = (f"<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://127.0.0.1/{msg_id}.jpg]]></PicUrl>"
            f"<MediaId><![CDATA[media-{msg_id}]]></MediaId>" if image else
            f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[message {msg_id}]]></Content>")
    xml = (f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
           f"</FromUserName><CreateTime>1764036000</CreateTime>{body}<MsgId>{msg_id}</MsgId></xml>")
    row_id = inbox.store_inbound(runtime, parse_inbound(xml), xml, runtime.clock.now())
    assert row_id is not None
    return row_id


def load(runtime, message_id: int) -> InboundMessage:
    with runtime.unit_of_work() as session:
        return session.get(InboundMessage, message_id)


def audit_actors(runtime) -> list[str]:
    with runtime.unit_of_work() as session:
        return list(session.scalars(select(AuditEvent.actor).order_by(AuditEvent.id)))


def record_and_finish(runtime, row: InboundMessage, worker_id: str) -> None:
    """A minimal handler: one effect (an audit row) and finish, in the same unit of work."""
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        session.add(AuditEvent(at=now, actor_type="system", actor=worker_id, action=f"inbox.handled:{row.id}"))
        inbox.finish(session, row, worker_id, now)


def failing_with(exc: Exception):
    def handler(runtime, row, worker_id):
        raise exc
    return handler


def past_lease(clock) -> None:
    clock.advance(seconds=LEASE_SECONDS + 1)


# --- storing ---------------------------------------------------------------

def test_store_inbound_refuses_a_retry_of_the_same_push(runtime):
    xml = load(runtime, push(runtime, msg_id=42)).payload
    assert inbox.store_inbound(runtime, parse_inbound(xml), xml, runtime.clock.now()) is None
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 1


def template_result_push(openid: str, msgid: int, create_time: int = 1764036000) -> str:
    return (f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
            f"</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msgid}</MsgID>"
            f"<Status><![CDATA[failed:user block]]></Status></xml>")


def test_a_template_s_result_is_one_push_of_its_own_not_a_message_with_the_same_id(runtime):
    """Its MsgID is its template's: not of the messages' sequence, and one person's two results may share
    a second. Only the platform pushing the same result again is a repeat."""
    push(runtime, "oDriverA", msg_id=777)
    pushes = [template_result_push("oDriverA", 777), template_result_push("oDriverB", 777),
              template_result_push("oDriverA", 778)]
    for xml in pushes:
        assert inbox.store_inbound(runtime, parse_inbound(xml), xml, runtime.clock.now()) is not None
    assert inbox.store_inbound(runtime, parse_inbound(pushes[0]), pushes[0], runtime.clock.now()) is None


# --- leases ---------------------------------------------------------------

def lease_of(image: bool) -> int:
    """A photo is leased for INBOX_LEASE_SECONDS (its download and storage); any other message for less."""
    return LEASE_SECONDS if image else inbox.NO_NETWORK_LEASE_SECONDS


def test_claim_leases_due_rows_and_counts_the_attempt(runtime, clock):
    first, second, photo = push(runtime, "oDriverA"), push(runtime, "oDriverB"), push(runtime, "oDriverC", image=True)
    assert inbox.claim_due(runtime, "w1") == [first, second, photo]
    for message_id, image in ((first, False), (second, False), (photo, True)):
        row = load(runtime, message_id)
        assert row.status is WorkStatus.PROCESSING
        assert (row.attempts, row.leased_by) == (1, "w1")
        assert row.lease_until == clock.now() + timedelta(seconds=lease_of(image))
    assert inbox.NO_NETWORK_LEASE_SECONDS < LEASE_SECONDS
    assert inbox.claim_due(runtime, "w2") == []  # the leases are live


def test_a_lease_shorter_than_the_no_network_lease_is_everyones(settings_overrides, clock):
    runtime = build_runtime(load_settings({**settings_overrides, "INBOX_LEASE_SECONDS": 5}, environ={}), clock=clock)
    try:
        text, photo = push(runtime, "oDriverA"), push(runtime, "oDriverB", image=True)
        assert inbox.claim_due(runtime, "w1") == [text, photo]
        assert {load(runtime, message_id).lease_until for message_id in (text, photo)} == \
            {clock.now() + timedelta(seconds=5)}
    finally:
        runtime.close()


def test_claim_honours_limit_and_arrival_order(runtime):
    ids = [push(runtime, f"oDriver{n}") for n in range(5)]
    assert inbox.claim_due(runtime, "w1", limit=2) == ids[:2]
    assert inbox.claim_due(runtime, "w2", limit=2) == ids[2:4]
    assert inbox.claim_due(runtime, "w3", only_id=ids[0]) == []  # leased by w1
    assert inbox.claim_due(runtime, "w3", only_id=ids[4]) == [ids[4]]


@pytest.mark.parametrize("image", [False, True], ids=["text", "photo"])
def test_worker_killed_mid_message_is_recovered_after_the_lease(runtime, clock, image):
    """A text (a menu click alike) comes back after the short lease: its answer still goes within the click's
    1-minute allowance; a photo after the whole lease, which its download and storage may need."""
    message_id = push(runtime, image=image)
    assert inbox.claim_due(runtime, "w1") == [message_id]  # ...and w1 dies here
    clock.advance(seconds=lease_of(image))
    assert inbox.claim_due(runtime, "w2") == []  # lease_until == now: still w1's
    clock.advance(seconds=1)
    assert inbox.claim_due(runtime, "w2") == [message_id]
    row = load(runtime, message_id)
    assert (row.leased_by, row.attempts) == ("w2", 2)
    assert inbox.process(runtime, message_id, "w2", record_and_finish) == "done"
    assert inbox.process(runtime, message_id, "w1", record_and_finish) == "lost"  # w1 restarted, too late
    assert load(runtime, message_id).status is WorkStatus.DONE
    assert audit_actors(runtime) == ["w2"]


def test_late_finish_after_takeover_raises_lease_lost_and_rolls_back(runtime, clock):
    message_id = push(runtime)
    assert inbox.claim_due(runtime, "w1") == [message_id]

    def slow_then_finish(runtime, row, worker_id):
        # w1's network work outlives its lease; w2 takes the message over and completes it.
        past_lease(clock)
        assert inbox.claim_due(runtime, "w2") == [message_id]
        assert inbox.process(runtime, message_id, "w2", record_and_finish) == "done"
        with pytest.raises(inbox.LeaseLost):
            record_and_finish(runtime, row, worker_id)
        raise inbox.LeaseLost(row.id)

    assert inbox.process(runtime, message_id, "w1", slow_then_finish) == "lost"
    row = load(runtime, message_id)
    assert (row.status, row.leased_by, row.attempts) == (WorkStatus.DONE, "w2", 2)
    assert audit_actors(runtime) == ["w2"]  # w1's effect rolled back with its failed finish


def test_finish_by_a_worker_that_does_not_hold_the_lease_raises(runtime):
    message_id = push(runtime)
    inbox.claim_due(runtime, "w1")
    row = load(runtime, message_id)
    with pytest.raises(inbox.LeaseLost), runtime.unit_of_work() as session:
        inbox.finish(session, row, "w2", runtime.clock.now())
    assert (load(runtime, message_id).status, load(runtime, message_id).leased_by) == (WorkStatus.PROCESSING, "w1")


def test_finish_marks_done_and_the_row_is_never_claimed_again(runtime, clock):
    message_id = push(runtime)
    inbox.claim_due(runtime, "w1")
    assert inbox.process(runtime, message_id, "w1", record_and_finish) == "done"
    row = load(runtime, message_id)
    assert (row.status, row.processed_at, row.lease_until) == (WorkStatus.DONE, clock.now(), None)
    clock.advance(days=1)
    assert inbox.claim_due(runtime, "w2") == []


# --- per-driver order -----------------------------------------------------

def test_one_message_per_driver_at_a_time_in_arrival_order(runtime):
    a1, a2, b1 = push(runtime, "oDriverA"), push(runtime, "oDriverA"), push(runtime, "oDriverB")
    assert inbox.claim_due(runtime, "w1", limit=10) == [a1, b1]  # a2 waits for a1
    assert inbox.claim_due(runtime, "w2", limit=10) == []
    assert inbox.process(runtime, a1, "w1", record_and_finish) == "done"
    assert inbox.claim_due(runtime, "w2", limit=10) == [a2]  # b1 is still w1's


def test_different_drivers_are_claimed_in_parallel(runtime):
    a1, _a2, b1 = push(runtime, "oDriverA"), push(runtime, "oDriverA"), push(runtime, "oDriverB")
    assert inbox.claim_due(runtime, "w1", limit=1) == [a1]
    assert inbox.claim_due(runtime, "w2", limit=1) == [b1]  # not a2: a1 is in flight
    assert inbox.claim_due(runtime, "w3", limit=1) == []


def test_a_template_s_result_holds_the_driver_s_later_message_back_only_while_it_waits_for_its_retry(runtime, clock):
    xml = template_result_push("oDriverA", 5555)
    result = inbox.store_inbound(runtime, parse_inbound(xml), xml, clock.now())
    text = push(runtime, "oDriverA")
    assert inbox.claim_due(runtime, "w1") == [result]  # not yet read: in order
    assert inbox.process(runtime, result, "w1", failing_with(inbox.RetryLater("its send not recorded yet"))) == "retry"
    assert inbox.claim_due(runtime, "w2") == [text]  # read again later: the text need not wait


def test_older_message_waiting_for_its_retry_still_blocks_the_newer(runtime, clock):
    older, newer = push(runtime, "oDriverA"), push(runtime, "oDriverA")
    inbox.claim_due(runtime, "w1")
    assert inbox.process(runtime, older, "w1", failing_with(inbox.RetryLater("storage down"))) == "retry"
    # The photo waits for storage; the text sent after it must not overtake it.
    assert inbox.claim_due(runtime, "w2") == []
    clock.set(load(runtime, older).next_attempt_at)
    assert inbox.claim_due(runtime, "w2") == [older]
    assert inbox.process(runtime, older, "w2", record_and_finish) == "done"
    assert inbox.claim_due(runtime, "w2") == [newer]


def test_older_message_with_an_expired_lease_blocks_the_newer(runtime, clock):
    older, newer = push(runtime, "oDriverA"), push(runtime, "oDriverA")
    assert inbox.claim_due(runtime, "w1", limit=1) == [older]
    past_lease(clock)
    assert inbox.claim_due(runtime, "w2", limit=10) == [older]  # recovered alone, not with the newer
    assert load(runtime, newer).status is WorkStatus.PENDING


def test_texts_pass_any_number_of_photos_held_up_by_an_outage_and_photos_keep_their_order(runtime, clock):
    photos = [push(runtime, "oDriverA", image=True) for _ in range(3)]
    first_text = push(runtime, "oDriverA")
    outage = inbox.RetryLater("storage unavailable", keep_trying_until=clock.now() + timedelta(hours=2))
    assert inbox.claim_due(runtime, "w1", limit=10) == [photos[0]]
    assert inbox.process(runtime, photos[0], "w1", failing_with(outage)) == "retry"

    assert inbox.claim_due(runtime, "w1", limit=10) == [first_text]  # past all three; the photos keep their turn
    assert inbox.process(runtime, first_text, "w1", record_and_finish) == "done"
    second_text = push(runtime, "oDriverA")
    assert inbox.claim_due(runtime, "w1", limit=10) == [second_text]
    assert inbox.process(runtime, second_text, "w1", record_and_finish) == "done"

    clock.set(load(runtime, photos[0]).next_attempt_at)  # storage is back
    assert inbox.claim_due(runtime, "w1", limit=10) == [photos[0]]
    assert inbox.process(runtime, photos[0], "w1", record_and_finish) == "done"
    third_text = push(runtime, "oDriverA")  # no photo waits any more: texts wait their turn again
    for expected in (photos[1], photos[2], third_text):
        assert inbox.claim_due(runtime, "w1", limit=10) == [expected]
        assert inbox.process(runtime, expected, "w1", record_and_finish) == "done"
    assert audit_actors(runtime) == ["w1"] * 6


def test_the_sweep_takes_what_is_due_before_photos_waiting_out_an_outage(runtime, clock):
    # Each retry of a waiting photo may take its download's whole timeout (a silent platform): another
    # driver's text due meanwhile must not wait behind every one of them, older as they are.
    outage = inbox.RetryLater("wechat None: timeout", keep_trying_until=clock.now() + timedelta(hours=2))
    photos = [push(runtime, f"oWaiting{n}", image=True) for n in range(2)]
    for photo in photos:
        assert inbox.claim_due(runtime, "w1", limit=1) == [photo]
        assert inbox.process(runtime, photo, "w1", failing_with(outage)) == "retry"
    text = push(runtime, "oDriverB")
    clock.advance(minutes=10)  # the photos' retries are due too
    assert inbox.claim_due(runtime, "w1", limit=1) == [text]
    assert inbox.claim_due(runtime, "w1", limit=1) == [photos[0]]  # then the waiting ones, oldest first
    assert inbox.claim_due(runtime, "w1", limit=10) == [photos[1]]


def test_oldest_first_takes_a_photo_waiting_out_an_outage_before_later_messages(runtime, clock):
    outage = inbox.RetryLater("storage unavailable", keep_trying_until=clock.now() + timedelta(hours=2))
    photo = push(runtime, "oWaiting", image=True)
    assert inbox.claim_due(runtime, "w1", limit=1) == [photo]
    assert inbox.process(runtime, photo, "w1", failing_with(outage)) == "retry"
    texts = [push(runtime, f"oOther{n}") for n in range(2)]
    clock.advance(minutes=10)
    assert inbox.claim_due(runtime, "w1", limit=1, oldest_first=True) == [photo]
    assert inbox.claim_due(runtime, "w1", limit=2, oldest_first=True) == texts


def test_failed_message_does_not_block_the_driver_forever(runtime, clock):
    poison, later = push(runtime, "oDriverA"), push(runtime, "oDriverA")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert inbox.claim_due(runtime, f"w{attempt}", limit=1) == [poison]
        inbox.process(runtime, poison, f"w{attempt}", failing_with(ValueError("bad payload")))
        clock.advance(minutes=11)  # past any backoff
    assert load(runtime, poison).status is WorkStatus.FAILED
    assert inbox.claim_due(runtime, "w9") == [later]


# --- failures, retries, poison ---------------------------------------------

@pytest.mark.parametrize("error", [inbox.RetryLater("storage unavailable"), RuntimeError("bug in a handler")],
                         ids=["retry_later", "unexpected"])
def test_failures_back_off_then_end_visibly_failed(runtime, clock, error):
    message_id = push(runtime)
    delays = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert inbox.claim_due(runtime, "w1") == [message_id]
        outcome = inbox.process(runtime, message_id, "w1", failing_with(error))
        row = load(runtime, message_id)
        assert row.attempts == attempt and row.lease_until is None
        assert type(error).__name__ in row.last_error and str(error) in row.last_error
        if attempt < MAX_ATTEMPTS:
            assert (outcome, row.status) == ("retry", WorkStatus.PENDING)
            delays.append(row.next_attempt_at - clock.now())
            assert inbox.claim_due(runtime, "w2") == []  # not due yet
            clock.advance(delays[-1])
        else:
            assert (outcome, row.status) == ("failed", WorkStatus.FAILED)
    assert delays[0] > timedelta(0) and delays == sorted(delays) and delays[0] < delays[-1]
    clock.advance(days=7)
    assert inbox.claim_due(runtime, "w2") == []  # no loop


def test_the_give_up_hook_runs_once_in_the_failing_transaction(runtime, clock):
    message_id = push(runtime)
    told: list[int] = []
    for _ in range(MAX_ATTEMPTS):
        clock.advance(days=1)
        assert inbox.claim_due(runtime, "w1") == [message_id]
        inbox.process(runtime, message_id, "w1", failing_with(RuntimeError("bug")),
                      on_give_up=lambda session, row, now: told.append(row.id))
    assert told == [message_id] and load(runtime, message_id).status is WorkStatus.FAILED


def test_retry_later_with_patience_outlives_the_attempt_limit_until_its_deadline(runtime, clock):
    message_id = push(runtime)
    deadline = clock.now() + timedelta(hours=2)
    error = inbox.RetryLater("storage unavailable", keep_trying_until=deadline)
    for _ in range(MAX_ATTEMPTS * 3):
        clock.advance(minutes=10)
        assert inbox.claim_due(runtime, "w1") == [message_id]
        assert inbox.process(runtime, message_id, "w1", failing_with(error)) == "retry"
    clock.advance(deadline - clock.now())
    assert inbox.claim_due(runtime, "w1") == [message_id]
    assert inbox.process(runtime, message_id, "w1", failing_with(error)) == "failed"


def test_retry_later_keeps_the_cause_in_last_error(runtime):
    message_id = push(runtime)
    inbox.claim_due(runtime, "w1")

    def storage_down(runtime, row, worker_id):
        try:
            raise ConnectionRefusedError("127.0.0.1:9000")
        except ConnectionRefusedError as exc:
            raise inbox.RetryLater("storage unavailable") from exc

    assert inbox.process(runtime, message_id, "w1", storage_down) == "retry"
    assert load(runtime, message_id).last_error == "ConnectionRefusedError: storage unavailable"


def test_a_stored_error_text_is_masked_like_a_log_line(runtime, clock):
    """An error may quote a row (a database's constraint error, an exception naming the sender): the text is
    stored, and the desk shows a notice's, where the log filter does not reach (acceptance pass)."""
    openid = "oQuotedInAnError0123456789ab"
    message_id = push(runtime, openid)
    inbox.claim_due(runtime, "w1")
    error = RuntimeError(f"Failing row contains ({openid}, 13800138000, 粤A12345)")
    assert inbox.process(runtime, message_id, "w1", failing_with(error)) == "retry"
    stored = load(runtime, message_id).last_error
    assert "Failing row contains" in stored
    assert not any(secret in stored for secret in (openid, "13800138000", "A12345"))

    # Masked before it is cut to its 500 characters: an openid across the cut is masked, not cut short.
    clock.advance(minutes=10)
    inbox.claim_due(runtime, "w1")
    assert inbox.process(runtime, message_id, "w1", failing_with(RuntimeError("x" * 469 + " " + openid))) == "retry"
    stored = load(runtime, message_id).last_error
    assert len(stored) <= 500 and openid[:8] not in stored


def test_effects_of_a_failing_handler_roll_back(runtime):
    message_id = push(runtime)
    inbox.claim_due(runtime, "w1")

    def write_then_crash(runtime, row, worker_id):
        with runtime.unit_of_work() as session:
            session.add(AuditEvent(at=runtime.clock.now(), actor_type="system", actor=worker_id, action="x"))
            session.flush()
            raise RuntimeError("crash after writing")

    assert inbox.process(runtime, message_id, "w1", write_then_crash) == "retry"
    assert audit_actors(runtime) == []


def test_worker_dying_on_every_attempt_ends_failed_not_in_a_loop(runtime, clock):
    """A message that kills its worker (or hangs past the lease) every time must still end visibly failed."""
    message_id = push(runtime)
    claims = 0
    for attempt in range(1, MAX_ATTEMPTS + 3):
        if inbox.claim_due(runtime, f"w{attempt}") == [message_id]:
            claims += 1
        past_lease(clock)  # ...and the worker dies without a word
    assert inbox.give_up_on_exhausted(runtime) == [message_id]  # the sweep
    row = load(runtime, message_id)
    assert claims == MAX_ATTEMPTS
    assert row.status is WorkStatus.FAILED and row.attempts == MAX_ATTEMPTS


def test_a_message_whose_worker_died_on_its_last_attempt_tells_the_sender(runtime, clock):
    message_id = push(runtime)
    told: list[int] = []
    for attempt in range(MAX_ATTEMPTS + 1):
        inbox.give_up_on_exhausted(runtime, on_give_up=lambda session, row, now: told.append(row.id))  # the sweep
        inbox.claim_due(runtime, f"w{attempt}")
        past_lease(clock)
    inbox.give_up_on_exhausted(runtime, on_give_up=lambda session, row, now: told.append(row.id))
    assert load(runtime, message_id).status is WorkStatus.FAILED and told == [message_id]


def waiting_past_the_attempt_limit(runtime, clock):
    """A message that has spent every attempt waiting out an outage; (its id, its deadline)."""
    message_id = push(runtime)
    deadline = clock.now() + timedelta(hours=2)
    outage = inbox.RetryLater("storage unavailable", keep_trying_until=deadline)
    for _ in range(MAX_ATTEMPTS):
        clock.advance(minutes=10)
        assert inbox.claim_due(runtime, "w1") == [message_id]
        inbox.process(runtime, message_id, "w1", failing_with(outage))
    return message_id, deadline


def test_a_message_waiting_out_an_outage_survives_dying_workers_until_its_deadline(runtime, clock):
    message_id, deadline = waiting_past_the_attempt_limit(runtime, clock)
    clock.advance(minutes=10)
    assert inbox.claim_due(runtime, "w2") == [message_id]  # ...and this worker dies
    past_lease(clock)
    assert inbox.claim_due(runtime, "w3") == [message_id]  # still waiting, not failed
    clock.advance(deadline - clock.now() + timedelta(minutes=1))
    assert inbox.give_up_on_exhausted(runtime) == [message_id]  # the sweep
    assert load(runtime, message_id).status is WorkStatus.FAILED


@pytest.mark.parametrize("then", [RuntimeError("a bug"), inbox.RetryLater("wechat 40164: not allowed")],
                         ids=["an_error", "a_retry_without_patience"])
def test_a_message_waiting_out_an_outage_keeps_its_deadline_whatever_fails_it_then(runtime, clock, then):
    message_id, deadline = waiting_past_the_attempt_limit(runtime, clock)
    clock.advance(minutes=10)
    assert inbox.claim_due(runtime, "w1") == [message_id]
    assert inbox.process(runtime, message_id, "w1", failing_with(then)) == "retry"
    assert load(runtime, message_id).waiting_until == deadline  # texts still go past it
    clock.advance(deadline - clock.now())
    assert inbox.claim_due(runtime, "w1") == [message_id]
    assert inbox.process(runtime, message_id, "w1", failing_with(then)) == "failed"


def test_a_failing_give_up_hook_does_not_undo_the_failure(runtime, clock):
    message_id = push(runtime)

    def broken_hook(session, row, now):
        raise RuntimeError("cannot tell the sender")

    for _ in range(MAX_ATTEMPTS):
        clock.advance(days=1)
        inbox.claim_due(runtime, "w1")
        inbox.process(runtime, message_id, "w1", failing_with(RuntimeError("bug")), on_give_up=broken_hook)
    assert load(runtime, message_id).status is WorkStatus.FAILED


# --- real concurrency (PostgreSQL) ----------------------------------------

def _claim_concurrently(runtime, workers: int, handle) -> tuple[dict[str, list[int]], list[BaseException]]:
    claimed: dict[str, list[int]] = {f"worker-{n}": [] for n in range(workers)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers, timeout=20)

    def run(worker_id: str) -> None:
        try:
            barrier.wait()
            for _ in range(200):  # bounded: 20 rows cannot need more rounds than this
                ids = inbox.claim_due(runtime, worker_id, limit=2)
                if not ids:
                    break
                claimed[worker_id].extend(ids)
                for message_id in ids:
                    handle(message_id, worker_id)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(worker_id,)) for worker_id in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return claimed, errors


@pytest.mark.postgres_only
def test_concurrent_workers_claim_every_row_exactly_once(runtime):
    ids = [push(runtime, f"oDriver{n:02d}") for n in range(20)]
    claimed, errors = _claim_concurrently(runtime, 4, lambda message_id, worker_id: None)
    assert errors == []
    everything = sorted(i for worker_ids in claimed.values() for i in worker_ids)
    assert everything == ids  # every row, none twice
    for worker_id, worker_ids in claimed.items():
        for message_id in worker_ids:
            row = load(runtime, message_id)
            assert (row.leased_by, row.attempts, row.status) == (worker_id, 1, WorkStatus.PROCESSING)


@pytest.mark.postgres_only
def test_concurrent_workers_keep_each_driver_in_order(runtime):
    openids = [f"oDriver{n}" for n in range(5)]
    ids = [push(runtime, openids[n % 5]) for n in range(20)]
    in_flight: set[str] = set()
    order: dict[str, list[int]] = {openid: [] for openid in openids}
    lock = threading.Lock()

    def finish_and_release(runtime, row, worker_id):
        now = runtime.clock.now()
        with runtime.unit_of_work() as session:
            session.add(AuditEvent(at=now, actor_type="system", actor=worker_id, action=f"inbox.handled:{row.id}"))
            inbox.finish(session, row, worker_id, now)
            with lock:  # released before the commit: the driver's next message can only be claimed after it
                in_flight.discard(row.openid)

    def handle(message_id: int, worker_id: str) -> None:
        row = load(runtime, message_id)
        with lock:
            assert row.openid not in in_flight, f"two messages of {row.openid} in flight"
            in_flight.add(row.openid)
            order[row.openid].append(message_id)
        assert inbox.process(runtime, message_id, worker_id, finish_and_release) == "done"

    claimed, errors = _claim_concurrently(runtime, 4, handle)
    assert errors == []
    assert sorted(i for worker_ids in claimed.values() for i in worker_ids) == ids
    for openid, handled in order.items():
        assert handled == sorted(handled) and len(handled) == 4, (openid, handled)
    assert len(audit_actors(runtime)) == 20


@contextlib.contextmanager
def runtime_through_a_proxy(settings_overrides, clock, database_url):
    """(proxy, a runtime whose database connections go through it): see tests.support.pg_cut."""
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from tests.support.pg_cut import postgres_through_a_proxy

    with postgres_through_a_proxy(database_url) as (proxy, through_proxy):
        runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": through_proxy}, environ={}),
                                clock=clock)
        try:
            yield proxy, runtime
        finally:
            runtime.close()


@pytest.mark.postgres_only
def test_a_database_blip_under_a_message_s_processing_leaves_it_due_again_not_leased(settings_overrides, clock,
                                                                                     database_url):
    """The database goes away for a moment (a restart, a failover) while a claimed message is processed: its retry
    is recorded once the database is back, seconds later, rather than the message staying leased, its driver's
    next messages behind it, until the lease lapses (acceptance pass: a minute)."""
    from sqlalchemy import text

    with runtime_through_a_proxy(settings_overrides, clock, database_url) as (proxy, runtime):
        message_id = push(runtime, "oBlip")
        assert inbox.claim_due(runtime, "w1") == [message_id]

        def blip_under_it(rt, row, worker_id):
            proxy.refuse(1.5)
            with rt.unit_of_work() as session:
                session.execute(text("SELECT 1"))

        assert inbox.process(runtime, message_id, "w1", blip_under_it) == "retry"
        row = load(runtime, message_id)
        assert (row.status, row.lease_until) == (WorkStatus.PENDING, None)
        assert "OperationalError" in row.last_error


@pytest.mark.postgres_only
def test_a_database_blip_as_a_claimed_message_is_read_does_not_leave_it_leased(settings_overrides, clock,
                                                                               database_url):
    """The server ended the pooled connection (a restart, pg_terminate_backend) just as a claimed message was to be
    read for processing: it is read again a second later and processed, rather than left leased, its driver's
    next messages behind it, until the lease lapses (acceptance pass: a minute without an answer)."""
    with runtime_through_a_proxy(settings_overrides, clock, database_url) as (proxy, runtime):
        message_id = push(runtime, "oBlip")
        assert inbox.claim_due(runtime, "w1") == [message_id]
        proxy.refuse(0.8)

        assert inbox.process(runtime, message_id, "w1", record_and_finish) == "done"

        assert load(runtime, message_id).status is WorkStatus.DONE
        assert audit_actors(runtime) == ["w1"]


def test_a_database_outage_while_processing_is_one_line_and_a_bug_its_traceback(runtime, caplog):
    """A failover under the conversation's transaction (acceptance pass: a 60-line traceback for each message it
    met) is an outage like any other: one line, and the message is tried again after its backoff."""
    from accident_service.db import DatabaseUnavailable

    outage, bug = push(runtime), push(runtime, "oDriverB")
    assert sorted(inbox.claim_due(runtime, "w1", limit=2)) == sorted([outage, bug])
    with caplog.at_level(logging.WARNING, logger="accident_service.wechat.inbox"):
        assert inbox.process(runtime, outage, "w1", failing_with(DatabaseUnavailable())) == "retry"
        assert inbox.process(runtime, bug, "w1", failing_with(RuntimeError("a bug"))) == "retry"
    [outage_line, bug_line] = [record for record in caplog.records if record.name == "accident_service.wechat.inbox"]
    assert outage_line.levelno == logging.WARNING and outage_line.exc_info is None
    assert "database unavailable (DatabaseUnavailable)" in outage_line.getMessage()
    assert bug_line.levelno == logging.ERROR and bug_line.exc_info is not None
