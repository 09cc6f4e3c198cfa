"""The outbox dispatcher: send due notifications, retry by error code, give up visibly.

Each row is leased (see accident_service.leases) so several schedulers and the
web pool can dispatch at once; a row is sent and marked sent only while its
lease is ours, so each notification goes out once per dedupe key (a worker
dying between the send and its commit means one re-send after the lease).
Transient WeChat errors (busy, quota, network) retry with backoff; permanent
ones (unsubscribed, outside the 48-hour window, invalid openid) end in FAILED
with the reason. A kind with a configured template (and template data) goes as a
template message, which the 48-hour customer-service window does not limit.
Notices about a case (booking.notices: booked, rescheduled, cancelled,
confirmed, retake, reminder, no-show, expired, evidence updated) are stored
as facts and rendered here, when sent, in the party's language as it is then;
other messages (conversation replies) are stored as their text.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service import leases, messages, metrics
from accident_service.booking import notices
from accident_service.models import Case, Notification, Party, WorkStatus
from accident_service.runtime import Runtime
from accident_service.wechat.client import WeChatApiError

log = logging.getLogger(__name__)


def dispatch_due(runtime: Runtime, worker_id: str, *, limit: int = 50) -> int:
    """Send up to ``limit`` due notifications; returns how many were attempted.

    Delivery failures are recorded on the rows, never raised; database errors propagate.
    """
    attempted = 0
    for _ in range(limit):
        with runtime.unit_of_work() as session:
            ids = leases.claim(session, Notification, worker_id, now=runtime.clock.now(),
                               lease_seconds=runtime.settings.INBOX_LEASE_SECONDS, limit=1,
                               max_attempts=runtime.settings.OUTBOX_MAX_ATTEMPTS)
        if not ids:
            break
        _dispatch_one(runtime, ids[0], worker_id)
        attempted += 1
    return attempted


def _dispatch_one(runtime: Runtime, notification_id: int, worker_id: str) -> None:
    with runtime.unit_of_work() as session:
        row = session.get(Notification, notification_id)
        if row is None or row.leased_by != worker_id or row.status is not WorkStatus.PROCESSING:
            return  # taken over (our lease lapsed) or gone: sending now could send it twice
        language = _recipient_language_now(session, row)
        session.expunge(row)
    case_updates: dict[str, Any] = {}
    try:
        case_updates = _send(runtime, row, language)
    except WeChatApiError as exc:
        _after_failure(runtime, row, worker_id, exc)
        return
    except (KeyError, ValueError) as exc:  # a malformed payload will never send: give up visibly
        _after_failure(runtime, row, worker_id, WeChatApiError(None, f"bad payload: {exc}", permanent=True))
        return
    except Exception as exc:  # a bug must not abort the batch nor leave the row leased until it lapses
        log.exception("notification %s (%s) failed unexpectedly", row.id, row.kind)
        _after_failure(runtime, row, worker_id, WeChatApiError(None, f"{type(exc).__name__}: {exc}"))
        return
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        if leases.complete(session, Notification, row.id, worker_id, status=WorkStatus.DONE, sent_at=now,
                           last_error=None) and case_updates and row.case_id:
            case = session.get(Case, row.case_id)
            for name, value in case_updates.items() if case is not None else ():
                setattr(case, name, value)
    metrics.SENDS.labels("wechat", row.kind, "sent").inc()


def _recipient_language_now(session: Session, row: Notification) -> str:
    """The language to render a notice about a case in: the party's as it is now, else the row's.

    A driver may switch language while the notice waits (say, for a WeChat outage to pass).
    """
    if not (isinstance(row.payload, dict) and "notice" in row.payload and row.case_id is not None):
        return row.language
    now = session.scalar(select(Party.language).where(Party.case_id == row.case_id, Party.openid == row.openid))
    return now or row.language


def _send(runtime: Runtime, row: Notification, language: str) -> dict[str, Any]:
    """Send one notification; returns case columns to record (the join QR code)."""
    api = runtime.wechat
    payload = row.payload or {}
    if row.kind == "join_invite":
        data = payload.get("template_data", {})
        qr = api.create_join_qrcode(str(data["scene"]), int(data.get("expire_seconds", 86400)))
        text = messages.text("conv.join_invite_qr", row.language, qr_url=qr.image_url,
                             join_code=data.get("join_code", ""))
        api.send_text(row.openid, text)
        return {"join_qr_ticket": qr.ticket, "join_qr_url": qr.image_url}
    text, template_data = message_of(row, language)
    template_id = runtime.settings.template_for(row.kind)
    if template_id and template_data:
        api.send_template(row.openid, template_id, template_data)
        return {}
    api.send_text(row.openid, text)
    return {}


def message_of(row: Notification, language: str | None = None) -> tuple[str, Any]:
    """What a row sends: its customer-service text and its template data.

    A notice stored as facts is rendered here, in ``language`` (default: the
    row's). Raises KeyError or ValueError for a payload that cannot be rendered.
    """
    payload = row.payload
    if not isinstance(payload, dict):
        raise ValueError(f"the payload is {type(payload).__name__}, not an object")
    if "notice" in payload:
        return notices.render(row.kind, language or row.language, payload["notice"])
    return str(payload.get("text", "")), payload.get("template_data")


def _after_failure(runtime: Runtime, row: Notification, worker_id: str, exc: WeChatApiError) -> None:
    now = runtime.clock.now()
    out_of_attempts = row.attempts >= runtime.settings.OUTBOX_MAX_ATTEMPTS
    give_up = exc.permanent or out_of_attempts
    error = f"{exc.errcode}: {exc.errmsg}"[:500]
    with runtime.unit_of_work() as session:
        leases.complete(session, Notification, row.id, worker_id,
                        status=WorkStatus.FAILED if give_up else WorkStatus.PENDING, last_error=error,
                        next_attempt_at=now + leases.backoff(row.attempts))
    outcome = "gave_up" if give_up else "retry"
    metrics.SENDS.labels("wechat", row.kind, outcome).inc()
    if give_up:
        metrics.FAILURES.labels("outbox", metrics.outbox_failure_reason(exc.errcode, permanent=exc.permanent)).inc()
        log.warning("notification %s (%s) not delivered: %s", row.id, row.kind, error)
