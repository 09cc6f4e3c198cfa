"""The scheduler's periodic jobs and the ``accident-service scheduler`` process.

Every job claims its rows atomically (leases, conditional UPDATEs, unique
outbox keys), so any number of scheduler processes may run side by side and
a crash loses nothing: unfinished work is picked up when its lease lapses.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from accident_service import metrics
from accident_service.clock import HOME_TIMEZONE
from accident_service.db import error_name, is_outage
from accident_service.notify.channels import SEND_SERIES
from accident_service.photos.checks import REJECTION_CODES
from accident_service.runtime import Runtime
from accident_service.settings import SettingsError

log = logging.getLogger(__name__)


def worker_name() -> str:
    """This scheduler process's name in the leases (up to 54 characters; a job's own adds 3, the column holds 64)."""
    return f"sched-{socket.gethostname()[:40]}-{os.getpid()}"


def process_inbox(runtime: Runtime, worker_id: str) -> int:
    from accident_service.wechat.processing import run_inbox_once

    return run_inbox_once(runtime, worker_id, limit=50)


def dispatch_outbox(runtime: Runtime, worker_id: str) -> int:
    from accident_service.notify.dispatch import dispatch_due

    return dispatch_due(runtime, worker_id, limit=100)


def send_reminders(runtime: Runtime, worker_id: str) -> int:
    from accident_service.booking.scheduled import send_due_reminders

    return send_due_reminders(runtime)


def expire_drafts(runtime: Runtime, worker_id: str) -> int:
    from accident_service.booking.scheduled import expire_idle_drafts

    return expire_idle_drafts(runtime)


def mark_no_shows(runtime: Runtime, worker_id: str) -> int:
    from accident_service.booking.scheduled import mark_no_shows as mark

    return mark(runtime)


def generate_slots(runtime: Runtime, worker_id: str) -> int:
    from accident_service.booking.scheduled import generate_upcoming_slots

    return generate_upcoming_slots(runtime)


def forget_push_signatures(runtime: Runtime, worker_id: str) -> int:
    from accident_service.wechat.replay import forget_signatures, retention

    with runtime.unit_of_work() as session:
        keep = retention(runtime.settings.WECHAT_TIMESTAMP_TOLERANCE_SECONDS)
        return forget_signatures(session, seen_before=runtime.clock.now() - keep)


def purge_personal_data(runtime: Runtime, worker_id: str) -> int:
    """Retention (RETENTION_DAYS): photos and personal data of long-closed cases; returns the cases purged."""
    from accident_service.logs import log_context
    from accident_service.retention import purge_closed_cases

    with log_context(f"purge_personal_data:{worker_id}:{runtime.clock.now():%Y%m%dT%H%M%S}"):
        return purge_closed_cases(runtime).cases


def forget_idempotency_keys(runtime: Runtime, worker_id: str) -> int:
    from accident_service.api.idempotency import forget_expired

    with runtime.unit_of_work() as session:
        return forget_expired(session, now=runtime.clock.now())


Job = Callable[[Runtime, str], int]
# (job, seconds between runs); slot generation and the retention purge run nightly, see build_scheduler.
# The outbox comes last, so that `scheduler --once` sends what the other jobs wrote.
PERIODIC_JOBS: tuple[tuple[Job, int], ...] = (
    (process_inbox, 2),
    (send_reminders, 30),
    (expire_drafts, 60),
    (mark_no_shows, 60),
    (forget_push_signatures, 300),
    (forget_idempotency_keys, 300),
    (dispatch_outbox, 2),
)


def run_all_once(runtime: Runtime, worker_id: str) -> dict[str, int]:
    """Run every job once, in order (tests and `scheduler --once`)."""
    return {job.__name__: _guarded(job, runtime, worker_id) for job, _ in PERIODIC_JOBS}


def _guarded(job: Job, runtime: Runtime, worker_id: str) -> int:
    started = time.perf_counter()
    outcome = "ok"
    try:
        return job(runtime, worker_id)
    except Exception as exc:  # one failing job must not stop the scheduler; the next run retries
        if is_outage(exc):
            # One line: every job meets an outage every run (each 2 s), and a traceback each made a 90 s outage
            # 11,500 lines a scheduler (fault pass).
            log.warning("job %s: the database is unavailable (%s); the next run retries", job.__name__,
                        error_name(exc))
        else:
            log.exception("job %s failed", job.__name__)
        outcome = "error"
        return 0
    finally:  # the duration first: a run counted always has its duration in (a scrape may come between)
        metrics.JOB_SECONDS.labels(job.__name__).observe(time.perf_counter() - started)
        metrics.JOB_RUNS.labels(job.__name__, outcome).inc()


def build_scheduler(runtime: Runtime, *, worker_id: str | None = None,
                    scheduler: BaseScheduler | None = None) -> BaseScheduler:
    worker_id = worker_id or worker_name()
    scheduler = scheduler or BlockingScheduler(timezone="UTC")
    defaults = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}
    for number, (job, seconds) in enumerate(PERIODIC_JOBS):
        # Each job a lease holder of its own: the jobs run in parallel threads, and the inbox sweep sends
        # its messages' notices as the dispatcher does; sharing a name, each would take the other's lease
        # (lapsed mid-send) for its own.
        scheduler.add_job(_guarded, "interval", seconds=seconds, args=(job, runtime, f"{worker_id}-{number}"),
                          id=job.__name__, name=job.__name__, **defaults)
    scheduler.add_job(_guarded, CronTrigger(hour=2, minute=0, timezone=HOME_TIMEZONE),
                      args=(generate_slots, runtime, worker_id), id="generate_slots", name="generate_slots",
                      **defaults)
    scheduler.add_job(_guarded, CronTrigger(hour=3, minute=30, timezone=HOME_TIMEZONE),
                      args=(purge_personal_data, runtime, worker_id), id="purge_personal_data",
                      name="purge_personal_data", **defaults)
    metrics.start_series(photo_rejections=REJECTION_CODES, sends=SEND_SERIES,  # the sweep checks photos too
                         jobs=tuple(job.args[0].__name__ for job in scheduler.get_jobs()))  # _guarded's label
    if runtime.settings.SCHEDULER_METRICS_PORT:
        _serve_metrics_while_running(scheduler, runtime.settings.SCHEDULER_METRICS_PORT)
    return scheduler


def _serve_metrics_while_running(scheduler: BaseScheduler, port: int) -> None:
    """/metrics on ``port`` from now to the scheduler's shutdown: its jobs, processing and sends.

    Bound here, before the scheduler starts: a port taken (another scheduler on the host) stops startup naming
    the setting. Bound in a start listener, the error went to APScheduler, which logs a listener's error and
    runs on, so a scrape of the port read the other scheduler's figures (acceptance pass).
    """
    try:
        server = metrics.serve_scheduler_metrics(port)
    except OSError as exc:
        raise SettingsError(f"SCHEDULER_METRICS_PORT: cannot serve metrics on port {port}: "
                            f"{exc.strerror or exc}; one port per scheduler process on a host") from None
    log.info("scheduler metrics on port %s", port)

    def stop(_event) -> None:
        server.shutdown()
        server.server_close()

    scheduler.add_listener(stop, EVENT_SCHEDULER_SHUTDOWN)
