"""Each metric family: present with its labels, and moving when the thing it counts happens.

Counters are read in this process (no multiprocess directory here); the queue
figures come from /metrics, which reads them from the database. Adding up over
gunicorn workers is tested in tests/test_ops.py, the scheduler's own /metrics
in tests/test_jobs.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from accident_service import jobs, metrics
from accident_service.booking.appointments import SlotUnavailable
from accident_service.desk import actions as desk
from accident_service.models import Case, Photo, Slot, WorkStatus
from accident_service.notify import allowance
from accident_service.notify.dispatch import dispatch_due
from accident_service.outbox import enqueue
from accident_service.sandbox.images import make_jpeg
from accident_service.wechat import inbox
from tests.booking import factories as make
from tests.booking.test_appointments import world  # noqa: F401  (the fixture)
from tests.conftest import T0
from tests.support.live import drain
from tests.wechat.test_webhook import TOKEN, plain_query, post, text_message


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moves:
    """The change of one sample across a block: ``with Moves("x_total", a="b") as moved: ...; moved.by``."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels

    def __enter__(self) -> Moves:
        self.before = counter(self.name, **self.labels)
        return self

    def __exit__(self, *exc_info) -> None:
        self.by = counter(self.name, **self.labels) - self.before


def scraped(client) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def gauge(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def settings_overrides(settings_overrides):
    return {**settings_overrides, "WECHAT_TOKEN": TOKEN}


def test_webhook_requests_latency_and_pushes_by_outcome(client):
    body = text_message(msg_id=880001)
    with Moves("accident_webhook_requests_total", method="POST", status="200") as answered, \
            Moves("accident_webhook_requests_total", method="POST", status="403") as refused, \
            Moves("accident_webhook_seconds_count") as timed, \
            Moves("accident_inbound_messages_total", msg_type="text", outcome="stored") as stored, \
            Moves("accident_inbound_messages_total", msg_type="text", outcome="duplicate") as duplicate:
        post(client, body, plain_query())
        post(client, body, plain_query())  # the platform's retry
        post(client, body, {**plain_query(), "signature": "0" * 40})
    assert (answered.by, refused.by, timed.by, stored.by, duplicate.by) == (2, 1, 3, 1, 1)


def test_the_content_type_names_the_text_format_once_as_prometheus_client_s_own_server_does(client):
    """Prometheus 3 parses it with Go's mime.ParseMediaType, which refuses a parameter given twice: a second
    charset failed every scrape (acceptance pass)."""
    from email.message import Message

    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

    given = client.get("/metrics").headers["Content-Type"]
    assert given == CONTENT_TYPE_PLAIN_0_0_4
    header = Message()
    header["Content-Type"] = given
    names = [name for name, _ in header.get_params()[1:]]
    assert sorted(names) == sorted(set(names)) == ["charset", "version"]


def test_methods_a_caller_makes_up_share_one_series(client):
    """The callback is public: a series per made-up method would let anyone grow every worker's metrics without end
    (acceptance pass)."""
    with Moves("accident_webhook_requests_total", method="other", status="405") as other:
        for method in ("QEOEUHJFZJBD", "PROPFIND", "PUT"):
            assert client.open("/wechat", method=method).status_code == 405
    assert other.by == 3
    assert not [name for name, labels in scraped(client) if name == "accident_webhook_requests_total"
                and dict(labels)["method"] not in ("GET", "POST", "other")]


def test_inbox_backlog_by_status_and_the_age_of_its_oldest_push(client, runtime, clock):
    samples = scraped(client)
    assert gauge(samples, "accident_database_up") == 1
    assert {status.value: gauge(samples, "accident_inbox_messages", status=status.value)
            for status in WorkStatus} == dict.fromkeys((s.value for s in WorkStatus), 0)
    assert gauge(samples, "accident_inbox_oldest_age_seconds") == 0

    post(client, text_message(msg_id=880101), plain_query())
    clock.advance(seconds=30)
    post(client, text_message(msg_id=880102), plain_query())
    clock.advance(seconds=60)
    samples = scraped(client)
    assert gauge(samples, "accident_inbox_messages", status="pending") == 2
    assert gauge(samples, "accident_inbox_oldest_age_seconds") == 90

    [first] = inbox.claim_due(runtime, "w1", limit=1)
    inbox.process(runtime, first, "w1", _finish)
    samples = scraped(client)
    assert gauge(samples, "accident_inbox_messages", status="done") == 1
    assert gauge(samples, "accident_inbox_oldest_age_seconds") == 60


def test_a_push_held_back_on_purpose_ages_the_backlog_but_is_not_due(client, runtime, clock):
    """The flood limit defers a message (acceptance pass: the age alone climbed for an hour with nothing stuck): the
    time a push has waited for a worker since it came due tells the two apart."""
    from accident_service.wechat.xml_gate import parse_inbound

    xml = text_message(msg_id=880201)
    inbox.store_inbound(runtime, parse_inbound(xml), xml, clock.now(), not_before=clock.now() + timedelta(minutes=5))
    clock.advance(seconds=120)
    samples = scraped(client)
    assert gauge(samples, "accident_inbox_oldest_age_seconds") == 120
    assert gauge(samples, "accident_inbox_oldest_due_seconds") == 0

    clock.advance(seconds=200)  # due for 20 s, and no worker took it
    samples = scraped(client)
    assert gauge(samples, "accident_inbox_oldest_due_seconds") == 20

    # A message waiting its turn behind an older one of its sender counts from when it came due (README: telling
    # the two apart costs a check of each against its sender's others, seconds a scrape on a large backlog).
    xml = text_message(msg_id=880202)
    inbox.store_inbound(runtime, parse_inbound(xml), xml, clock.now() - timedelta(seconds=60))
    assert gauge(scraped(client), "accident_inbox_oldest_due_seconds") == 60


def test_a_message_whose_worker_died_counts_as_due_from_its_lease_s_end(client, runtime, clock):
    post(client, text_message(msg_id=880301), plain_query())
    assert inbox.claim_due(runtime, "died", limit=1)  # ... and the worker dies
    clock.advance(seconds=inbox.NO_NETWORK_LEASE_SECONDS + 30)  # a text's lease
    assert gauge(scraped(client), "accident_inbox_oldest_due_seconds") == 30


def _finish(runtime, row, worker_id) -> None:
    with runtime.unit_of_work() as session:
        inbox.finish(session, row, worker_id, runtime.clock.now())


def test_outbox_backlog_by_state_shows_a_state_it_does_not_know_yet(client, runtime, clock):
    """A notice waiting for the person's next action is a state of its own (another release may write it)."""
    with runtime.unit_of_work() as session:
        for n in range(3):
            enqueue(session, openid="oWaiting", kind="status", text="hello", dedupe_key=f"m:{n}", now=clock.now())
    samples = scraped(client)
    assert gauge(samples, "accident_outbox_notifications", status="pending") == 3
    assert all(("accident_outbox_notifications", (("status", s.value),)) in samples for s in WorkStatus)

    with runtime.engine.begin() as connection:  # as a release with a "waiting" state would write it
        connection.execute(text("UPDATE notification SET status = 'waiting' WHERE dedupe_key = 'm:0'"))
    samples = scraped(client)
    assert gauge(samples, "accident_outbox_notifications", status="waiting") == 1
    assert gauge(samples, "accident_outbox_notifications", status="pending") == 2


def test_inbox_failures_by_reason(runtime, clock):
    with Moves("accident_failures_total", queue="inbox", reason="attempts_exhausted") as exhausted, \
            Moves("accident_failures_total", queue="inbox", reason="lease_expired") as lapsed:
        ids = []
        for n in range(2):
            xml = text_message(msg_id=880200 + n, source=f"oFails{n}")
            ids.append(inbox.store_inbound(runtime, inbox_message(xml), xml, clock.now()))
        buggy, dying = ids
        for _ in range(runtime.settings.INBOX_MAX_ATTEMPTS + 1):
            inbox.give_up_on_exhausted(runtime)  # the sweep's step
            for message_id in inbox.claim_due(runtime, "w1", limit=10):
                if message_id == buggy:  # its handler raises every time
                    inbox.process(runtime, message_id, "w1", _raise)
            clock.advance(minutes=11)  # past any backoff, and past the lease of the one whose worker "dies"
    assert (exhausted.by, lapsed.by) == (1, 1)


def inbox_message(xml: str):
    from accident_service.wechat.xml_gate import parse_inbound

    return parse_inbound(xml)


def _raise(runtime, row, worker_id) -> None:
    raise RuntimeError("a bug")


def test_sends_by_channel_and_result_and_outbox_failures_by_reason(wechat_runtime, wechat, clock):
    with wechat_runtime.unit_of_work() as session:
        for n in range(4):  # each driver has just written, so texts to them may go
            wechat.note_user_activity(f"oSends{n}")
            allowance.record_action(session, f"oSends{n}", "message", clock.now())
            enqueue(session, openid=f"oSends{n}", kind="reply", text="hi", dedupe_key=f"s:{n}", now=clock.now())
    labels = {"channel": "wechat", "kind": "reply"}
    with Moves("accident_sends_total", result="sent", **labels) as sent, \
            Moves("accident_sends_total", result="retry", **labels) as retried, \
            Moves("accident_sends_total", result="rerouted", **labels) as rerouted, \
            Moves("accident_sends_total", result="held", channel="-", kind="reply") as held, \
            Moves("accident_sends_total", result="failed", **labels) as failed, \
            Moves("accident_failures_total", queue="outbox", reason="wechat_40003") as wrong_account:
        wechat.inject_error("message/custom/send", -1, times=1)  # to oSends0: busy, retried
        dispatch_due(wechat_runtime, "w1", limit=1)
        wechat.inject_error("message/custom/send", 43004, times=1)  # to oSends1: not following: another way
        dispatch_due(wechat_runtime, "w1", limit=2)  # ...none for a reply: it waits for the person
        wechat.inject_error("message/custom/send", 40003, times=1)  # to oSends2: an openid of another account
        dispatch_due(wechat_runtime, "w1", limit=1)
        clock.advance(minutes=1)
        dispatch_due(wechat_runtime, "w1")  # oSends0 again, and oSends3
    assert (sent.by, retried.by, rerouted.by, held.by, failed.by, wrong_account.by) == (2, 1, 1, 1, 1, 1)


def test_photos_accepted_and_rejected_by_reason(live_app, wechat_runtime, wechat):
    with Moves("accident_photos_total", outcome="accepted", reason="") as accepted, \
            Moves("accident_photos_total", outcome="rejected", reason="too_small") as too_small:
        wechat.post_text("oPhotographer", "快处")
        drain(wechat_runtime)
        wechat.post_image("oPhotographer", wechat.add_media("good", make_jpeg("good", 1600, 1200)))
        wechat.post_image("oPhotographer", wechat.add_media("tiny", make_jpeg("tiny", 320, 240)))
        drain(wechat_runtime)
    assert (accepted.by, too_small.by) == (1, 1)


def test_bookings_by_action(runtime, world):  # noqa: F811  (the fixture)
    with Moves("accident_bookings_total", action="booked") as booked, \
            Moves("accident_bookings_total", action="rescheduled") as moved, \
            Moves("accident_bookings_total", action="cancelled") as cancelled:
        make.offer(runtime, world["case"], now=T0)
        make.choose(runtime, world["case"], 1, now=T0)
        make.offer(runtime, world["case"], now=T0 + timedelta(minutes=1))
        make.choose(runtime, world["case"], 2, now=T0 + timedelta(minutes=1))
    assert (booked.by, moved.by, cancelled.by) == (1, 1, 0)


def test_the_desks_moves_and_cancellations_count_and_a_full_slot_does_not(runtime, world):  # noqa: F811
    """Every change of an appointment counts, whoever made it; a booking refused for a full slot never happened."""
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)  # 天河 14:00
    full = world["slots"][("GZ-YX", 0)]
    with runtime.unit_of_work() as session:
        session.get(Slot, full).booked = 2  # taken by others
    with Moves("accident_bookings_total", action="booked") as booked, \
            Moves("accident_bookings_total", action="rescheduled") as moved, \
            Moves("accident_bookings_total", action="cancelled") as cancelled:
        with pytest.raises(SlotUnavailable), runtime.unit_of_work() as session:
            desk.reschedule(session, session.get(Case, world["case"]), full, staff="officer", settings=runtime.settings,
                            now=T0)
        with runtime.unit_of_work() as session:
            desk.reschedule(session, session.get(Case, world["case"]), world["slots"][("GZ-TH", 1)], staff="officer",
                            settings=runtime.settings, now=T0)
        with runtime.unit_of_work() as session:
            desk.cancel_appointment(session, session.get(Case, world["case"]), staff="officer",
                                    reason="the driver phoned", settings=runtime.settings, now=T0)
    assert (booked.by, moved.by, cancelled.by) == (0, 1, 1)


def test_a_rescheduling_rolled_back_is_not_counted(runtime, world):  # noqa: F811  (the fixture)
    """Counted on commit: a transaction that fails after the move (a lost lease, a failed COMMIT) moved nothing."""
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    with Moves("accident_bookings_total", action="rescheduled") as moved:
        with pytest.raises(RuntimeError), runtime.unit_of_work() as session:
            desk.reschedule(session, session.get(Case, world["case"]), world["slots"][("GZ-TH", 1)], staff="officer",
                            settings=runtime.settings, now=T0)
            raise RuntimeError("the transaction fails after the move")
    assert moved.by == 0


def test_a_photo_whose_commit_failed_counts_once_when_its_retry_commits(live_app, wechat_runtime, wechat, clock):
    failed = []

    def fail_the_first_commit_with_a_photo(session):
        if not failed and any(isinstance(each, Photo) for each in session.identity_map.values()):
            failed.append(True)
            raise RuntimeError("COMMIT failed")

    wechat.post_text("oRetried", "快处")
    drain(wechat_runtime)
    event.listen(Session, "before_commit", fail_the_first_commit_with_a_photo)
    try:
        before = counter("accident_photos_total", outcome="accepted", reason="")
        wechat.post_image("oRetried", wechat.add_media("good", make_jpeg("good", 1600, 1200)))
        drain(wechat_runtime)
        assert failed
        assert counter("accident_photos_total", outcome="accepted", reason="") == before  # its commit failed
        clock.advance(minutes=10)  # past the retry's back-off
        drain(wechat_runtime)
    finally:
        event.remove(Session, "before_commit", fail_the_first_commit_with_a_photo)
    with wechat_runtime.unit_of_work() as session:
        assert session.query(Photo).count() == 1
    assert counter("accident_photos_total", outcome="accepted", reason="") == before + 1


@pytest.mark.parametrize(("steps", "counted"), [
    ("count, commit", 1),
    ("count, rollback", 0),
    ("savepoint: count, release; commit", 1),
    ("savepoint: count, release; rollback", 0),
    ("savepoint: count, roll back; commit", 0),
    ("count; savepoint: roll back; commit", 1),
])
def test_counted_on_commit_only(runtime, steps, counted):
    series = Counter("accident_test_total", "a count for this test", registry=CollectorRegistry())
    session = runtime.session_factory()
    try:
        session.execute(text("SELECT 1"))
        if steps.startswith("count"):
            metrics.count_on_commit(session, series)
        if "savepoint" in steps:
            savepoint = session.begin_nested()
            if steps.startswith("savepoint"):
                metrics.count_on_commit(session, series)
            (savepoint.commit if "release" in steps else savepoint.rollback)()
        assert series._value.get() == 0  # nothing before the transaction commits
        (session.commit if steps.endswith("commit") else session.rollback)()
    finally:
        session.close()
    assert series._value.get() == counted


def test_counted_at_once_without_a_transaction(runtime):
    series = Counter("accident_test_total", "a count for this test", registry=CollectorRegistry())
    with runtime.session_factory() as session:
        metrics.count_on_commit(session, series, 2)
        assert series._value.get() == 2


def test_job_runs_and_durations(runtime, monkeypatch):
    def broken(runtime, worker_id):
        raise RuntimeError("bug in a job")

    monkeypatch.setattr(jobs, "PERIODIC_JOBS", ((broken, 2), (jobs.expire_drafts, 60)))
    with Moves("accident_job_runs_total", job="expire_drafts", outcome="ok") as ok, \
            Moves("accident_job_runs_total", job="broken", outcome="error") as failed, \
            Moves("accident_job_seconds_count", job="expire_drafts") as timed:
        jobs.run_all_once(runtime, "w1")
    assert (ok.by, failed.by, timed.by) == (1, 1, 1)


_FORKED_COUNTS = """
import os
from prometheus_client import CollectorRegistry, multiprocess
from accident_service import metrics

metrics.BOOKINGS.labels("booked").inc()
child = os.fork()
if child == 0:
    metrics.BOOKINGS.labels("booked").inc()
    os._exit(0)
os.waitpid(child, 0)
metrics.BOOKINGS.labels("booked").inc()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(registry.get_sample_value("accident_bookings_total", {"action": "booked"}))
"""


def test_a_process_forked_after_the_metrics_were_made_counts_in_a_file_of_its_own(tmp_path):
    """Multiprocess mode reads the process id once (metrics._ProcessId), so a fork must renew it: else the child
    writes into its parent's file and the parent's next count overwrites what the child counted."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _FORKED_COUNTS], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    assert float(done.stdout.strip()) == 3.0
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
