"""Prometheus metrics: counters the features move, and queue figures read from the database at scrape time.

Under gunicorn every worker counts for itself; with ``PROMETHEUS_MULTIPROC_DIR``
set (config/gunicorn.conf.py sets it) prometheus_client keeps the counts in
files there and :func:`exposition` adds all workers up. The inbox and outbox
figures come from the database at each scrape, so what waits or failed is
visible whichever process wrote it; they are served by the web (``/metrics``)
only, as every process would report the same rows.

A scheduler process counts its own work (jobs, processing, sends) and serves
it on ``SCHEDULER_METRICS_PORT`` (:func:`serve_scheduler_metrics`): schedulers
run on any host, so they do not share the web's multiprocess directory (give
them none, or one of their own).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import String, event, func, select, type_coerce
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)


class _ProcessId:
    """This process's id, read from the system once and again only in a forked child.

    In multiprocess mode prometheus_client asks for the process id on every count, to notice a fork; asked of
    the system that is a syscall, a few per WeChat push (measured: 3.6 % of the webhook's Python time).
    """

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self.refresh)

    def refresh(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


if values.ValueClass is not values.MutexValue:  # multiprocess mode, chosen by prometheus_client at its import
    # Before the first metric below is made: each takes the value class there is at the time.
    values.ValueClass = values.MultiProcessValue(process_identifier=_ProcessId())

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

WEBHOOK_REQUESTS = Counter("accident_webhook_requests_total",
                           "Requests to /wechat, by method (GET, POST, other) and HTTP status", ["method", "status"])
WEBHOOK_SECONDS = Histogram("accident_webhook_seconds", "Time to answer a request to /wechat",
                            buckets=LATENCY_BUCKETS)
INBOUND_MESSAGES = Counter("accident_inbound_messages_total",
                           "WeChat pushes by type and what became of them (stored, duplicate, deferred: stored "
                           "with its processing put off by the sender's rate limit, invalid, unknown)",
                           ["msg_type", "outcome"])
INBOX_PROCESSED = Counter("accident_inbox_processed_total", "Inbox rows processed", ["outcome"])
FAILURES = Counter("accident_failures_total", "Work given up for good, by queue (inbox, outbox) and reason",
                   ["queue", "reason"])
PHOTOS = Counter("accident_photos_total", "Photos checked: accepted, or rejected with the reason",
                 ["outcome", "reason"])
BOOKINGS = Counter("accident_bookings_total", "Appointments booked, moved (rescheduled) and cancelled, whoever did it "
                                              "(a driver, the desk, the API)", ["action"])
BOOKING_ACTIONS = ("booked", "rescheduled", "cancelled")
SENDS = Counter("accident_sends_total", "Outbox rows handled by the dispatcher, by channel (wechat, template, sms; "
                                        "- when none could carry it), kind and result (sent, held: waiting for the "
                                        "person, retry, rerouted, failed, unconfirmed, not_delivered: a template the "
                                        "platform later said did not reach the person, sent again another way; "
                                        "superseded: a notice a later one made moot before it reached the "
                                        "person: a template of those, or one that waited)",
                ["channel", "kind", "result"])
JOB_RUNS = Counter("accident_job_runs_total", "Scheduler job runs, by job and outcome (ok, error)", ["job", "outcome"])
JOB_SECONDS = Histogram("accident_job_seconds", "Scheduler job run time", ["job"],
                        buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300))

def count_on_commit(session: Session, series, amount: float = 1) -> None:
    """Add ``amount`` to ``series`` (a counter's child) once ``session``'s transaction commits; never if it rolls back.

    For what a transaction does (a booking, a photo checked, a send's outcome): counted at once, a rollback (a lost
    lease, a failed COMMIT, a race retried) would leave a count of something that never happened, and the retry
    would count it again. Counted at once, too, when ``session`` has no transaction (nothing to wait for).
    """
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        series.inc(amount)
        return
    session.info.setdefault(_PENDING, []).append((transaction, series, amount))


_PENDING = "metrics.pending_counts"


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: its counts wait for the transaction around it
        return
    for _transaction, series, amount in session.info.pop(_PENDING, ()):
        series.inc(amount)


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """A savepoint rolled back: what was counted in it (or in savepoints inside it) did not happen."""
    pending = session.info.get(_PENDING)
    if pending:
        pending[:] = [entry for entry in pending if not _within(entry[0], previous_transaction)]


@event.listens_for(Session, "after_transaction_end")
def _drop_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended: whatever is still pending was not committed (its commit counted the rest)."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def _within(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


class Failure(StrEnum):
    """Why work was given up for good: the ``reason`` label, named once here so that the places that count one
    and the series started at 0 (:data:`FAILURE_REASONS`) cannot spell it two ways."""

    LEASE_EXPIRED = "lease_expired"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    OUTAGE_OUTLASTED = "outage_outlasted"
    UNSENDABLE = "unsendable"


#: What work is given up for, by queue; besides these, a notice the platform refused for good counts as
#: ``wechat_<its error code>`` (:func:`outbox_failure_reason`).
FAILURE_REASONS = {"inbox": (Failure.LEASE_EXPIRED, Failure.ATTEMPTS_EXHAUSTED, Failure.OUTAGE_OUTLASTED),
                   "outbox": (Failure.LEASE_EXPIRED, Failure.ATTEMPTS_EXHAUSTED, Failure.UNSENDABLE)}


#: The results of a send that an alert watches, started at 0 for each (channel, kind) a send can be counted under.
WATCHED_SEND_RESULTS = ("sent", "failed")


def start_series(*, photo_rejections: tuple[str, ...], sends: tuple[tuple[str, str], ...] = (),
                 jobs: tuple[str, ...] = ()) -> None:
    """Every failure series, the photo series (accepted, and refused for each of ``photo_rejections``: the
    photo checks' REJECTION_CODES, passed in as this module sits below the features), every booking action,
    the sends sent and failed for each of ``sends``' (channel, kind) pairs (notify's SEND_SERIES), and each of
    ``jobs``' runs and durations, at 0 from the process's start.

    A labelled series appears only when first counted, and Prometheus takes a series that appears with
    1 for one that was always 1: ``increase()`` over it, and so an alert on it, would miss the first
    failure (or the first failed run, or the first blurred photo) after every restart.
    """
    for queue, reasons in FAILURE_REASONS.items():
        for reason in reasons:
            FAILURES.labels(queue, reason)
    PHOTOS.labels("accepted", "")
    for reason in photo_rejections:
        PHOTOS.labels("rejected", reason)
    for action in BOOKING_ACTIONS:
        BOOKINGS.labels(action)
    for channel, kind in sends:
        for result in WATCHED_SEND_RESULTS:
            SENDS.labels(channel, kind, result)
    for job in jobs:
        JOB_SECONDS.labels(job)
        for outcome in ("ok", "error"):
            JOB_RUNS.labels(job, outcome)


class QueueFigures(Collector):
    """Inbox and outbox rows per status, the age of the oldest unfinished push and how long the longest-due one has
    waited, read when scraped.

    Statuses are the WorkStatus values plus whatever the database holds, so a new state
    (a notice waiting for the person's next action) appears without a change here, even
    one written by a newer release than this process. ``accident_database_up`` is 0 and the
    rest left out when the database does not answer: the counters are still served.
    """

    def __init__(self, session_factory, clock) -> None:
        self._session_factory = session_factory
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from accident_service.db import error_name
        from accident_service.models import InboundMessage, Notification, WorkStatus

        up = GaugeMetricFamily("accident_database_up", "1 when the database answered this scrape")
        families = []
        try:
            with self._session_factory() as session:
                for name, model, documentation in (
                        ("accident_inbox_messages", InboundMessage, "WeChat pushes in the inbox, by status"),
                        ("accident_outbox_notifications", Notification, "Notifications in the outbox, by status")):
                    status = type_coerce(model.status, String)  # as stored: a state this release does not know
                    counts = dict(session.execute(select(status, func.count()).group_by(status)).all())
                    gauge = GaugeMetricFamily(name, documentation, labels=["status"])
                    for value in dict.fromkeys([*(s.value for s in WorkStatus), *sorted(counts)]):
                        gauge.add_metric([value], counts.get(value, 0))
                    families.append(gauge)
                oldest = session.scalar(select(func.min(InboundMessage.received_at)).where(
                    InboundMessage.status.in_((WorkStatus.PENDING, WorkStatus.PROCESSING))))
                now = self._clock.now()
                # A pending message from its next attempt, a dead worker's from its lease's end. One waiting its turn
                # behind an older unfinished message of its sender counts too: telling those apart checks each due
                # message against its sender's others, seconds a scrape on a large backlog (review).
                due_since = min(filter(None, (
                    session.scalar(select(func.min(InboundMessage.next_attempt_at)).where(
                        InboundMessage.status == WorkStatus.PENDING, InboundMessage.next_attempt_at <= now)),
                    session.scalar(select(func.min(InboundMessage.lease_until)).where(
                        InboundMessage.status == WorkStatus.PROCESSING, InboundMessage.lease_until < now)))),
                                default=None)
        except Exception as exc:  # any driver error: report the database as down, not a failed scrape
            log.warning("metrics: database unavailable: %s", error_name(exc))
            up.add_metric([], 0)
            yield up
            return
        age = GaugeMetricFamily("accident_inbox_oldest_age_seconds",
                                "Age of the oldest push not yet processed (0 when none waits)")
        age.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        # What to alert on: a message held back on purpose (the flood limit, a photo waiting out an outage until its
        # next try) ages the backlog without anything being stuck; one due and not taken means workers lag or fail.
        waiting = GaugeMetricFamily("accident_inbox_oldest_due_seconds",
                                    "How long the longest-due push has waited for a worker since it came due "
                                    "(0 when none is due)")
        waiting.add_metric([], max(0.0, (now - due_since).total_seconds()) if due_since else 0.0)
        up.add_metric([], 1)
        yield from (up, *families, age, waiting)


def exposition(session_factory, clock) -> bytes:
    """The text format for ``/metrics``: every worker's counters, then the queue figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    queues = CollectorRegistry()
    queues.register(QueueFigures(session_factory, clock))
    return generate_latest(counters) + generate_latest(queues)


def serve_scheduler_metrics(port: int):
    """Serve this process's counters on ``port`` (all interfaces, like the web's BIND); returns the server.

    Without the ``_created`` series prometheus_client adds to every counter and histogram outside multiprocess
    mode: the web's ``/metrics`` (multiprocess) has none, so the two read alike, and a scheduler's series are not
    doubled by timestamps no rule reads."""
    from prometheus_client import disable_created_metrics, start_http_server

    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WithoutWebSeries())
    server, _thread = start_http_server(port, registry=registry)
    return server


#: Counted by the web's callback only: a scheduler showing them at 0 would read as a callback that gets nothing.
WEB_ONLY = (WEBHOOK_REQUESTS, WEBHOOK_SECONDS, INBOUND_MESSAGES)


class _WithoutWebSeries(Collector):
    """The process's registry, but for the series only the web's callback counts (acceptance pass: a scheduler's
    ``/metrics`` showed ``accident_webhook_seconds`` at 0)."""

    def __init__(self) -> None:
        self._web_only = frozenset(family.name for metric in WEB_ONLY for family in metric.describe())

    def collect(self) -> Iterator:
        return (family for family in REGISTRY.collect() if family.name not in self._web_only)


def outbox_failure_reason(errcode: int | None, *, permanent: bool) -> str:
    """A bounded label: the platform's error code, or what else ended the notification."""
    if not permanent:
        return Failure.ATTEMPTS_EXHAUSTED
    return f"wechat_{errcode}" if errcode is not None else Failure.UNSENDABLE
