"""The scheduler: its jobs in-process, and real `accident-service scheduler` processes side by side."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from accident_service import jobs
from accident_service.db import Base, make_engine, make_session_factory, unit_of_work
from accident_service.models import Notification, WorkStatus
from accident_service.notify import allowance
from accident_service.outbox import enqueue
from tests import conftest
from tests.conftest import WECHAT_APPID, WECHAT_SECRET, WECHAT_TOKEN

JOB_NAMES = {job.__name__ for job, _ in jobs.PERIODIC_JOBS}


def add(runtime, openid: str, message: str, key: str) -> None:
    """A reply to ``openid``, who has just written (so the platform allows a text)."""
    with runtime.unit_of_work() as session:
        allowance.record_action(session, openid, "message", runtime.clock.now())
        enqueue(session, openid=openid, kind="reply", text=message, dedupe_key=key, now=runtime.clock.now())


def have_written(wechat, *openids: str) -> None:
    """The drivers have just sent the account a message: the platform lets the service answer each
    with up to 5 customer-service messages within 48 hours (WECHAT.md §5)."""
    for openid in openids:
        wechat.note_user_activity(openid)


# --- in-process --------------------------------------------------------------------

def test_run_all_once_runs_every_job_and_dispatches(wechat_runtime, wechat):
    have_written(wechat, "oDriverA")
    add(wechat_runtime, "oDriverA", "from the outbox", "k1")

    result = jobs.run_all_once(wechat_runtime, "w1")

    assert set(result) == JOB_NAMES
    assert result["dispatch_outbox"] == 1
    assert wechat.messages_to("oDriverA") == ["from the outbox"]
    assert jobs.run_all_once(wechat_runtime, "w1")["dispatch_outbox"] == 0


def test_run_all_once_answers_a_stored_push(live_app, wechat_runtime, wechat):
    assert wechat.post_text("oDriverA", "help").status_code == 200
    assert wechat.messages_to("oDriverA") == []  # stored only: INBOX_PROCESS_INLINE is off

    result = jobs.run_all_once(wechat_runtime, "w1")

    assert result["process_inbox"] == 1 and result["dispatch_outbox"] == 0  # sent right after its message
    assert wechat.messages_to("oDriverA")


def test_run_all_once_sends_what_the_other_jobs_wrote_in_the_same_run(wechat_runtime, wechat, clock):
    from accident_service.cases import parties

    have_written(wechat, "oIdleDriver")  # the message that started the case
    with wechat_runtime.unit_of_work() as session:  # ...which our ledger learnt from the inbox
        allowance.record_action(session, "oIdleDriver", "message", clock.now())
        parties.start_case(session, openid="oIdleDriver", language="en", settings=wechat_runtime.settings,
                         now=clock.now())
    clock.advance(minutes=wechat_runtime.settings.DRAFT_EXPIRY_MINUTES + 1)

    result = jobs.run_all_once(wechat_runtime, "w1")

    assert result["expire_drafts"] == 1 and result["dispatch_outbox"] == 1
    assert len(wechat.messages_to("oIdleDriver")) == 1


def test_a_failing_job_does_not_stop_the_others(wechat_runtime, wechat, monkeypatch):
    def broken(runtime, worker_id):
        raise RuntimeError("bug in a job")

    monkeypatch.setattr(jobs, "PERIODIC_JOBS", ((broken, 2), (jobs.dispatch_outbox, 2)))
    have_written(wechat, "oDriverA")
    add(wechat_runtime, "oDriverA", "still sent", "k1")

    assert jobs.run_all_once(wechat_runtime, "w1") == {"broken": 0, "dispatch_outbox": 1}
    assert wechat.messages_to("oDriverA") == ["still sent"]


def test_a_job_meeting_a_database_outage_logs_one_line_and_a_bug_its_traceback(settings_overrides, caplog):
    """Every job meets an outage at every run (each 2 s): a traceback each made a 90 s outage 11,500 lines a
    scheduler (fault pass)."""
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings

    down = build_runtime(load_settings({**settings_overrides, "AUTO_MIGRATE": False,
                                        "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test"},
                                       environ={}))
    try:
        with caplog.at_level(logging.WARNING, logger="accident_service.jobs"):
            assert jobs._guarded(jobs.dispatch_outbox, down, "w1") == 0
        [line] = caplog.records
        assert line.levelno == logging.WARNING and line.exc_info is None
        assert "dispatch_outbox: the database is unavailable (OperationalError)" in line.getMessage()

        def broken(runtime, worker_id):
            raise RuntimeError("bug in a job")

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="accident_service.jobs"):
            jobs._guarded(broken, down, "w1")
        [line] = caplog.records
        assert line.levelno == logging.ERROR and line.exc_info is not None
    finally:
        down.close()


def test_build_scheduler_registers_every_job(wechat_runtime):
    scheduler = jobs.build_scheduler(wechat_runtime, worker_id="w1", scheduler=BackgroundScheduler(timezone="UTC"))

    registered = {job.id: job for job in scheduler.get_jobs()}
    assert set(registered) == JOB_NAMES | {"generate_slots", "purge_personal_data"}
    for job, seconds in jobs.PERIODIC_JOBS:
        trigger = registered[job.__name__].trigger
        assert isinstance(trigger, IntervalTrigger) and trigger.interval == timedelta(seconds=seconds)
        assert registered[job.__name__].max_instances == 1
    for name, hour, minute in (("generate_slots", "2", "0"), ("purge_personal_data", "3", "30")):
        nightly = registered[name].trigger
        assert isinstance(nightly, CronTrigger) and str(nightly.timezone) == "Asia/Shanghai"
        assert {f.name: str(f) for f in nightly.fields}.items() >= {"hour": hour, "minute": minute}.items()
        assert registered[name].max_instances == 1


def test_the_purge_job_purges_old_closed_cases(runtime, clock):
    from accident_service.cases import lifecycle, parties
    from accident_service.models import Case, Party

    with runtime.unit_of_work() as session:
        case, party, _ = parties.start_case(session, openid="oOldDriver", language="zh", settings=runtime.settings,
                                            now=clock.now())
        lifecycle.apply(session, case, "withdraw", actor=lifecycle.Actor.A, party=party, details={"confirmed": True},
                        settings=runtime.settings, now=clock.now())
    clock.advance(days=runtime.settings.RETENTION_DAYS + 1)

    assert jobs.purge_personal_data(runtime, "w1") == 1
    assert jobs.purge_personal_data(runtime, "w1") == 0
    with runtime.unit_of_work() as session:
        assert session.scalar(select(Party.openid)) == "purged"
        assert session.scalar(select(Case.purged_at)) == clock.now()


def test_started_scheduler_dispatches_the_outbox(wechat_runtime, wechat):
    have_written(wechat, "oDriverA")
    add(wechat_runtime, "oDriverA", "via the scheduler", "k1")
    scheduler = jobs.build_scheduler(wechat_runtime, worker_id="w1", scheduler=BackgroundScheduler(timezone="UTC"))
    scheduler.start()
    try:
        wechat.wait_for_sent(lambda m: m["touser"] == "oDriverA", timeout=15)
    finally:
        scheduler.shutdown(wait=True)
    assert wechat.messages_to("oDriverA") == ["via the scheduler"]


# --- real processes ------------------------------------------------------------------

@pytest.fixture
def private_database_url(tmp_path):
    """A database of our own: scheduler processes work on every row they see.

    On PostgreSQL a fresh database on the test server, so the schedulers neither
    take other people's rows in the shared ``test`` database nor lose ours to
    their truncations. (POSTGRES_URL is read here, not imported: it is set when pytest is
    configured, after tests/faults/conftest.py may have imported this module.)
    """
    if not conftest.ON_POSTGRES:
        url = f"sqlite:///{tmp_path}/schedulers.db"
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    name = f"sched_{uuid.uuid4().hex[:12]}"
    admin = make_engine(make_url(conftest.POSTGRES_URL).set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(conftest.POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def scheduler_env(private_database_url, wechat, tmp_path):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
    return {**inherited, "DATABASE_URL": private_database_url, "APP_ENV": "test", "AUTO_MIGRATE": "false",
            "DATA_DIR": str(tmp_path / "var"), "STORAGE_URL": f"file://{tmp_path}/objects",
            "SECRET_KEY": "test-secret-key", "REDIS_URL": "", "LOG_LEVEL": "WARNING",
            "WECHAT_API_BASE_URL": wechat.api_base_url, "WECHAT_APP_ID": WECHAT_APPID,
            "WECHAT_APP_SECRET": WECHAT_SECRET, "WECHAT_TOKEN": WECHAT_TOKEN}


CLI = [sys.executable, "-c", "from accident_service.cli import main; main()"]


def enqueue_committed(database_url: str, items: list[tuple[str, str]]) -> None:
    """(openid, text) pairs, due now by the wall clock the scheduler processes use."""
    engine = make_engine(database_url)
    now = datetime.now(UTC) - timedelta(seconds=1)
    with unit_of_work(make_session_factory(engine)) as session:
        for openid in {openid for openid, _ in items}:  # each has just written, so texts may go
            allowance.record_action(session, openid, "message", now)
        for n, (openid, message) in enumerate(items):
            enqueue(session, openid=openid, kind="reply", text=message, dedupe_key=f"sched:{n}", now=now)
    engine.dispose()


def statuses(database_url: str) -> collections.Counter[WorkStatus]:
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        rows = session.execute(select(Notification.status, func.count()).group_by(Notification.status)).all()
    engine.dispose()
    return collections.Counter({status: n for status, n in rows})


def test_scheduler_once_runs_every_job_and_prints_json(scheduler_env, private_database_url, wechat):
    have_written(wechat, "oDriverA")
    enqueue_committed(private_database_url, [("oDriverA", "sent by --once")])

    result = subprocess.run([*CLI, "scheduler", "--once"], env=scheduler_env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == JOB_NAMES and report["dispatch_outbox"] == 1
    assert wechat.messages_to("oDriverA") == ["sent by --once"]


@pytest.mark.postgres_only  # a server that can be away
@pytest.mark.parametrize("auto_migrate", ["false", "true"])  # away at the schema's check, or at the first job's
def test_a_scheduler_started_while_the_database_is_away_waits_for_it(scheduler_env, private_database_url, wechat,
                                                                    tmp_path, auto_migrate):
    """It used to exit at once (status 1), leaving what a dead worker held leased with nobody to sweep it (fault
    pass: the whole stack starting while PostgreSQL was hung)."""
    from tests.support.pg_cut import postgres_through_a_proxy

    have_written(wechat, "oDriverA")
    enqueue_committed(private_database_url, [("oDriverA", "sent once the database answered")])
    if auto_migrate == "true":  # the tables were made without Alembic: the schema is at head
        from alembic import command

        from accident_service.schema import alembic_config

        command.stamp(alembic_config(private_database_url), "head")
    with postgres_through_a_proxy(private_database_url) as (proxy, through_proxy):
        proxy.refuse(4)
        with open(tmp_path / "waiting.log", "wb") as log:
            process = subprocess.Popen([*CLI, "scheduler"], env={**scheduler_env, "DATABASE_URL": through_proxy,
                                                                 "AUTO_MIGRATE": auto_migrate},
                                       stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not wechat.messages_to("oDriverA") and time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "waiting.log").read_text(errors="replace")
                time.sleep(0.25)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert wechat.messages_to("oDriverA") == ["sent once the database answered"]
    assert "waiting for the database (" in (tmp_path / "waiting.log").read_text(errors="replace")


def test_a_scheduler_waiting_for_the_database_stops_at_sigterm(scheduler_env, tmp_path):
    """At once and with status 0, as a running one does: as PID 1 in a container SIGTERM's default does nothing,
    and `docker stop` waited out its timeout (review)."""
    env = {**scheduler_env, "AUTO_MIGRATE": "true", "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    with open(tmp_path / "waiting.log", "wb") as log:
        process = subprocess.Popen([*CLI, "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "waiting for the database" not in (tmp_path / "waiting.log").read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def start_scheduler(scheduler_env, tmp_path):
    """Start `accident-service scheduler` processes; SIGTERM (then kill) them all at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"scheduler{n}.log", "wb") as log:
            process = subprocess.Popen([*CLI, "scheduler"], env=scheduler_env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def logs(tmp_path, count: int) -> str:
    return "\n".join((tmp_path / f"scheduler{n}.log").read_text(errors="replace")[-3000:] for n in range(count))


@pytest.mark.slow
def test_two_schedulers_send_each_notification_exactly_once(start_scheduler, private_database_url, wechat,
                                                             tmp_path):
    expected = {f"oDriver{n:02d}": [f"{n}-{i}" for i in range(3)] for n in range(10)}
    have_written(wechat, *expected)
    enqueue_committed(private_database_url,
                      [(openid, texts[i]) for i in range(3) for openid, texts in expected.items()])

    processes = [start_scheduler(0), start_scheduler(1)]
    deadline = time.monotonic() + 90  # a bound for a busy machine, not a speed requirement
    while statuses(private_database_url)[WorkStatus.DONE] < 30 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), logs(tmp_path, 2)
        time.sleep(0.25)

    assert statuses(private_database_url) == {WorkStatus.DONE: 30}, logs(tmp_path, 2)
    sent = collections.Counter((m["touser"], m["text"]) for m in wechat.sent)
    assert len(wechat.sent) == 30 and set(sent.values()) == {1}
    for openid, texts in expected.items():
        assert wechat.messages_to(openid) == texts  # per-driver order held across processes
    assert wechat.stable_token_requests == 1  # one token shared by both processes

    for process in processes:  # SIGTERM is a clean shutdown
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=15) == 0, logs(tmp_path, 2)


@pytest.mark.slow
@pytest.mark.timeout(300)  # its own bounds (cold starts on a busy machine) exceed the suite's 120 s
def test_scheduler_killed_mid_message_leaves_a_lease_that_another_worker_recovers(
        start_scheduler, scheduler_env, private_database_url, wechat, wechat_settings_overrides, clock, tmp_path):
    from accident_service import create_app
    from accident_service.models import InboundMessage, Photo, PhotoStatus
    from accident_service.runtime import build_runtime
    from accident_service.sandbox.images import make_jpeg
    from accident_service.settings import load_settings
    from tests.support.live import LiveServer, drain, wait_until

    clock.set(datetime.now(UTC))
    runtime = build_runtime(load_settings({**wechat_settings_overrides, "DATABASE_URL": private_database_url,
                                           "STORAGE_URL": scheduler_env["STORAGE_URL"]}, environ={}), clock=clock)
    server = LiveServer(create_app(runtime=runtime)).start()
    try:
        wechat.callback_url = server.url + "/wechat"
        wechat.set_delay("media/get", 60)  # the worker will be inside the download when it dies
        wechat.post_click("oCrash", "REPORT_ACCIDENT")
        wechat.post_image("oCrash", wechat.add_media("crash-1", make_jpeg("crash-1", 1600, 1200)))
        scheduler_env["INBOX_LEASE_SECONDS"] = "5"
        # The shared token is fetched before the scheduler starts, so the kill lands in the download, never
        # while the scheduler holds the token's refresh lock (which would hold the rescuer back for its 30 s).
        runtime.wechat.client.current_token()
        process = start_scheduler(0)

        def image_leased():
            with runtime.unit_of_work() as session:
                row = session.scalar(select(InboundMessage).where(InboundMessage.msg_type == "image"))
                return row if row.leased_by and row.leased_by.startswith("sched-") else None

        leased = wait_until(image_leased, timeout=90)  # a cold scheduler start on a busy machine
        process.kill()  # SIGKILL: no cleanup, the lease stays behind
        process.wait(timeout=10)
        with runtime.unit_of_work() as session:
            row = session.get(InboundMessage, leased.id)
            assert row.status is WorkStatus.PROCESSING and row.lease_until is not None

        wechat.clear_faults()
        clock.set(row.lease_until + timedelta(seconds=1))
        drain(runtime, worker_id="rescuer")

        with runtime.unit_of_work() as session:
            row = session.get(InboundMessage, leased.id)
            assert row.status is WorkStatus.DONE and row.attempts == 2
            photos = session.scalars(select(Photo)).all()
            assert [p.status for p in photos] == [PhotoStatus.ACCEPTED]
        assert any("1/3" in m for m in wechat.messages_to("oCrash"))
    finally:
        server.stop()
        runtime.close()


NOTICE = {"case_no": "20261125-KILLD", "fingerprint": "0123456789abcdef", "station": "天河事故处理点",
          "address": "广州市天河路 1 号", "timezone": "Asia/Shanghai",
          "starts_at": "2026-11-26T06:00:00+00:00", "ends_at": "2026-11-26T06:30:00+00:00"}


def enqueue_notices(database_url: str, drivers: dict[str, str], *, written: set[str], settings) -> None:
    """A must-read notice (a reminder) for each driver (openid: phone), each party to a case of their own."""
    from accident_service.cases.parties import start_case

    engine = make_engine(database_url)
    now = datetime.now(UTC) - timedelta(seconds=1)
    with unit_of_work(make_session_factory(engine)) as session:
        for openid, phone in drivers.items():
            if openid in written:
                allowance.record_action(session, openid, "message", now)
            case, party, _created = start_case(session, openid=openid, language="zh", settings=settings, now=now)
            party.phone = phone
            session.flush()
            enqueue(session, openid=openid, kind="reminder", notice=NOTICE | {"to": "A"}, case_id=case.id,
                    dedupe_key=f"reminder:{case.id}:A", now=now, language="zh")
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("channel", ["wechat", "template", "sms"])
@pytest.mark.timeout(300)  # its own bounds (cold starts on a busy machine) exceed the suite's 120 s
def test_a_scheduler_killed_mid_send_leaves_every_must_read_notice_delivered_exactly_once(
        channel, start_scheduler, scheduler_env, private_database_url, wechat, clock, tmp_path):
    """SIGKILL while the platform holds the first send; a second scheduler finishes the outbox.

    A text or an SMS whose send was under way is not sent again (the platform got it); a template is,
    with the same client_msg_id, and the platform drops the repeat. Each driver ends with one message.
    """
    from accident_service.settings import load_settings
    from tests.support.sms import notice_templates, running_sms_emulator

    clock.set(datetime.now(UTC))
    drivers = {f"oKill{channel}{n}": f"1380013{n:04d}" for n in range(4)}
    with running_sms_emulator(daily_limit_per_number=None) as sms:
        scheduler_env["INBOX_LEASE_SECONDS"] = "3"
        if channel == "template":
            scheduler_env["WECHAT_TEMPLATE_REMINDER"] = conftest.NOTICE_TEMPLATES["WECHAT_TEMPLATE_REMINDER"]
        if channel == "sms":
            scheduler_env.update(notice_templates(sms))
        for openid in drivers:  # they follow the account; only "wechat" drivers wrote lately
            wechat.note_user_activity(openid) if channel == "wechat" else wechat.add_follower(openid)
        enqueue_notices(private_database_url, drivers, written=set(drivers) if channel == "wechat" else set(),
                        settings=load_settings({"DATA_DIR": str(tmp_path)}, environ={}))
        held_path = {"wechat": "message/custom/send", "template": "message/template/send"}.get(channel)
        if held_path:
            wechat.hold(held_path)  # the platform holds the call until the scheduler is killed
            scheduler_env["WECHAT_API_TIMEOUT_SECONDS"] = "120"  # still waiting for it then, however slow the run
        sms_delay = 5  # seconds the SMS gateway holds the first call before handling it
        sms.delay(sms_delay, times=1)
        first = start_scheduler(0)

        def in_flight():
            engine = make_engine(private_database_url)
            with make_session_factory(engine)() as session:
                row = session.scalar(select(Notification).where(Notification.sending_at.is_not(None),
                                                                Notification.status == WorkStatus.PROCESSING))
            engine.dispose()
            return row

        from tests.support.live import wait_until

        sending = wait_until(in_flight, timeout=90)  # a cold scheduler start on a busy machine
        # The call reaches the platform, which holds it (a crash before the call: README).
        if held_path:
            wechat.wait_until_held(held_path, timeout=30)
            handled_by = time.monotonic()  # handled as soon as it is released, below
        else:
            assert wait_until(lambda: sms.request_count >= 1, timeout=30)
            handled_by = time.monotonic() + sms_delay
        assert first.poll() is None
        first.kill()  # SIGKILL while the platform holds the call: the row stays leased, marked as sending
        first.wait(timeout=10)
        assert sending.channel == channel
        wechat.clear_faults()

        start_scheduler(1)
        deadline = time.monotonic() + 90
        while statuses(private_database_url)[WorkStatus.DONE] < len(drivers) and time.monotonic() < deadline:
            time.sleep(0.25)

        assert statuses(private_database_url) == {WorkStatus.DONE: len(drivers)}, logs(tmp_path, 2)
        time.sleep(max(0.0, handled_by - time.monotonic()))  # the platform handles the call it held
        for openid, phone in drivers.items():
            received = len(wechat.sent_to(openid)) + len(sms.sent_to(f"+86{phone}"))
            assert received == 1, (openid, wechat.sent_to(openid), sms.sent_to(f"+86{phone}"))
        assert wechat.refusal_counts() == {}
        if channel == "template":  # sent again after the kill, and the platform dropped the repeat
            assert wechat.duplicate_templates_dropped == 1
        engine = make_engine(private_database_url)
        with make_session_factory(engine)() as session:
            row = session.get(Notification, sending.id)
            assert row.attempts == 2 and row.channel == channel
        engine.dispose()


def until_running(process, tmp_path):
    """The first scheduler's log, once it says it runs."""
    log_path = tmp_path / "scheduler0.log"
    deadline = time.monotonic() + 60  # a cold start on a busy machine, not a speed requirement
    while " running" not in log_path.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, logs(tmp_path, 1)
        time.sleep(0.2)
    return log_path


def test_with_json_logs_every_line_of_a_scheduler_is_one_json_object(start_scheduler, scheduler_env, tmp_path):
    scheduler_env.update(LOG_FORMAT="json", LOG_LEVEL="INFO")
    process = start_scheduler(0)
    log_path = until_running(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(r["message"].startswith("scheduler ") and r["message"].endswith(" running") for r in records)


@pytest.mark.slow
def test_a_scheduler_serves_its_own_metrics_on_its_port(start_scheduler, scheduler_env, wechat, tmp_path):
    """SCHEDULER_METRICS_PORT: the scheduler's job runs and durations, scraped from the scheduler itself."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.servers import free_port

    port = free_port()
    scheduler_env["SCHEDULER_METRICS_PORT"] = str(port)
    process = start_scheduler(0)

    def dispatch_runs() -> float:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        runs = samples.get(("accident_job_runs_total", (("job", "dispatch_outbox"), ("outcome", "ok"))), 0.0)
        assert not runs or samples[("accident_job_seconds_count", (("job", "dispatch_outbox"),))] >= runs
        # There from the start at 0 (an alert sees the first failed run), the nightly job's too.
        assert samples[("accident_job_runs_total", (("job", "purge_personal_data"), ("outcome", "error")))] == 0
        assert samples[("accident_job_seconds_count", (("job", "purge_personal_data"),))] == 0
        assert ("accident_sends_total", (("channel", "sms"), ("kind", "booked"), ("result", "failed"))) in samples
        assert not [name for name, _labels in samples if name.endswith("_created")]  # as the web's /metrics
        # Only the web's callback counts pushes: at 0 here they would read as a callback that gets none.
        assert not [name for name, _labels in samples if name.startswith(("accident_webhook", "accident_inbound"))]
        assert ("process_cpu_seconds_total", ()) in samples  # the process's own figures stay
        return runs

    deadline = time.monotonic() + 90  # a cold start on a busy machine, not a speed requirement
    first = None
    while time.monotonic() < deadline:
        assert process.poll() is None, logs(tmp_path, 1)
        try:
            runs = dispatch_runs()
        except requests.ConnectionError:
            runs = None  # not listening yet
        if runs:
            if first is None:
                first = runs
            elif runs > first:  # the outbox job runs every 2 s: the count moves between scrapes
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"job runs did not move on :{port}/metrics\n{logs(tmp_path, 1)}")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0, logs(tmp_path, 1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_a_scheduler_stops_is_ignored_and_it_stops_cleanly(start_scheduler, scheduler_env,
                                                                               tmp_path, signum):
    """Ctrl-C twice, or `timeout` signalling the child and then its group: the second signal came while the shutdown
    listener waited for the metrics server to stop, and was raised through APScheduler's listener call as
    "ERROR ... Error notifying listener" with a traceback ending in SystemExit (acceptance pass)."""
    from tests.support.servers import free_port

    scheduler_env.update(SCHEDULER_METRICS_PORT=str(free_port()), LOG_LEVEL="INFO")
    process = start_scheduler(0)
    log_path = until_running(process, tmp_path)
    process.send_signal(signum)
    time.sleep(0.05)  # into the metrics server's shutdown (its loop looks every 0.5 s)
    process.send_signal(signum)
    assert process.wait(timeout=30) == 0, logs(tmp_path, 1)
    told = log_path.read_text(errors="replace")
    assert "ERROR" not in told and "Traceback" not in told, told


def test_a_scheduler_whose_metrics_port_is_taken_stops_naming_the_setting(start_scheduler, scheduler_env, tmp_path):
    """Another scheduler on the host has the port: this one must not run on unseen, its figures nowhere and a
    scrape of the port reading the other's (acceptance pass)."""
    import socket as sockets

    with sockets.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        scheduler_env["SCHEDULER_METRICS_PORT"] = str(taken.getsockname()[1])
        process = start_scheduler(0)
        assert process.wait(timeout=60) == 2
    assert logs(tmp_path, 1).startswith(f"configuration error: SCHEDULER_METRICS_PORT: cannot serve metrics on port "
                                        f"{scheduler_env['SCHEDULER_METRICS_PORT']}")


def test_each_periodic_job_holds_leases_under_a_name_of_its_own_that_fits_the_column(runtime, monkeypatch):
    from apscheduler.schedulers.background import BackgroundScheduler

    monkeypatch.setattr(jobs.socket, "gethostname", lambda: "h" * 63)  # the longest a host name may be
    scheduler = jobs.build_scheduler(runtime, scheduler=BackgroundScheduler(timezone="UTC"))
    names = {job.name: job.args[2] for job in scheduler.get_jobs()}
    periodic = [names[job.__name__] for job, _ in jobs.PERIODIC_JOBS]
    assert len(set(periodic)) == len(periodic)
    assert names["process_inbox"] != names["dispatch_outbox"]
    assert max(len(name) for name in names.values()) <= 64
