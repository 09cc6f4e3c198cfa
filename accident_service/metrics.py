"""Prometheus metrics: counters shared by the features, and queue depths read at scrape time.

Under gunicorn every worker counts for itself; with ``PROMETHEUS_MULTIPROC_DIR``
set (config/gunicorn.conf.py sets it) prometheus_client keeps the counts in
files there and :func:`exposition` adds all workers up. The inbox and outbox
depths per status come from the database at each scrape, so failed messages
(``status="failed"``) are visible whichever process gave up on them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func, select

INBOUND_MESSAGES = Counter("accident_inbound_messages_total", "WeChat pushes accepted into the inbox",
                           ["msg_type", "outcome"])
INBOX_PROCESSED = Counter("accident_inbox_processed_total", "Inbox rows processed", ["outcome"])
PHOTOS = Counter("accident_photos_total", "Photos checked", ["outcome"])
BOOKINGS = Counter("accident_bookings_total", "Appointment changes", ["action"])
NOTIFICATIONS = Counter("accident_notifications_total", "Outbox rows handled by the dispatcher: by kind, channel "
                        "(wechat, template, sms, - when none could carry it) and outcome (sent, held, retry, "
                        "rerouted, failed, unconfirmed)", ["kind", "channel", "outcome"])
WEBHOOK_SECONDS = Histogram("accident_webhook_seconds", "Time to answer a WeChat push",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class QueueDepths(Collector):
    """Rows per status in the inbox and the notification outbox, counted when scraped."""

    def __init__(self, session_factory) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from accident_service.models import InboundMessage, Notification, WorkStatus

        for name, model, documentation in (
                ("accident_inbox_messages", InboundMessage, "WeChat pushes in the inbox, by status"),
                ("accident_outbox_notifications", Notification, "Notifications in the outbox, by status")):
            gauge = GaugeMetricFamily(name, documentation, labels=["status"])
            with self._session_factory() as session:
                counts = dict(session.execute(select(model.status, func.count()).group_by(model.status)).all())
            for status in WorkStatus:
                gauge.add_metric([status.value], counts.get(status, 0))
            yield gauge


def exposition(session_factory) -> bytes:
    """The text format for ``/metrics``: every worker's counters, then the queue depths."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    depths = CollectorRegistry()
    depths.register(QueueDepths(session_factory))
    return generate_latest(counters) + generate_latest(depths)
