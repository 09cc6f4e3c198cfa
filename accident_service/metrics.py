"""Prometheus metrics shared by the features (one registry per process)."""

from prometheus_client import Counter, Histogram

INBOUND_MESSAGES = Counter("accident_inbound_messages_total", "WeChat pushes accepted into the inbox",
                           ["msg_type", "outcome"])
INBOX_PROCESSED = Counter("accident_inbox_processed_total", "Inbox rows processed", ["outcome"])
PHOTOS = Counter("accident_photos_total", "Photos checked", ["outcome"])
BOOKINGS = Counter("accident_bookings_total", "Appointment changes", ["action"])
NOTIFICATIONS = Counter("accident_notifications_total", "Notifications dispatched", ["kind", "outcome"])
WEBHOOK_SECONDS = Histogram("accident_webhook_seconds", "Time to answer a WeChat push",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
