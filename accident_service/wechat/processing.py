"""Processing of leased inbox rows: network work first, then one unit of work.

A photo is downloaded from the platform (streamed, byte-capped, with a
timeout), then checked and stored by ``photos.intake`` (content-addressed, so
a retry rewrites identical bytes), all before the transaction that records
it, so no database lock is held during network calls. Transient failures
become :class:`~accident_service.wechat.inbox.RetryLater`; the driver is told
once that a photo is being saved when the store or the platform's download is down.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from accident_service import messages, outbox
from accident_service.cases import lifecycle, parties
from accident_service.cases import service as cases
from accident_service.logs import log_context
from accident_service.models import Case, InboundMessage, Party
from accident_service.notify import allowance, dispatch
from accident_service.outbox import REPLY_KIND, enqueue
from accident_service.photos.intake import (
    PhotoForClosedCase,
    PreparedPhoto,
    prepare_photo,
    refused_before_inspection,
)
from accident_service.runtime import Runtime
from accident_service.storage import StorageUnavailable
from accident_service.wechat import inbox, preferences
from accident_service.wechat.conversation import Conversation
from accident_service.wechat.inbox import PHOTO_TYPES
from accident_service.wechat.xml_gate import parse_inbound
from accident_service.wechat_api.client import MediaTooLarge, WeChatApiError

#: A photo moves up to 10 MB where an API call moves a few hundred bytes, so
#: its download gets this many API timeouts (20 s by default; the inbox lease is 60 s).
DOWNLOAD_TIMEOUT_FACTOR = 4

log = logging.getLogger(__name__)


def run_inbox_once(runtime: Runtime, worker_id: str, *, limit: int = 20) -> int:
    """The sweep: give up on messages whose worker died on their last attempt (their senders told at once),
    then claim and process up to ``limit`` due messages, each followed by its notices; returns how many
    were processed. Photos waiting out an outage go after every other due message; a run that spent its
    whole limit on others (a backlog) ends with the oldest due message whichever it is, so a steady stream
    of others cannot keep a waiting photo from its retries until its patience runs out."""
    with outbox.recipients_written() as recipients:
        inbox.give_up_on_exhausted(runtime, on_give_up=tell_sender_it_was_lost)
    dispatch.dispatch_after_change(runtime, worker_id, recipients)
    done = 0
    for _ in range(limit):  # bounded: a busy inbox is shared with the other workers
        if _claim_process_send(runtime, worker_id) is None:
            return done
        done += 1
    return done + (_claim_process_send(runtime, worker_id, oldest_first=True) is not None)


def run_drivers_messages(runtime: Runtime, worker_id: str, first_id: int, openid: str, *, follow: int,
                         leased_by: str | None = None, hand_on: inbox.HandOn | None = None) -> int:
    """Message ``first_id`` of driver ``openid``, then up to ``follow`` of their next ones as they come due,
    each followed by its notices; returns how many were processed.

    The web's pool, right after a push: a driver's message handed off while their previous one was still
    processing cannot be claimed then (one message per driver at a time), so the thread that finishes the
    previous one takes it on. Only messages sent after the one just processed: an earlier one is a retry
    (a photo waiting out an outage that a text overtook), the sweep's, and in the text lane other
    drivers' texts would wait behind its download. Nothing for this driver: the thread stops.
    ``leased_by``: ``first_id`` is claimed already, by that lease holder (handed on from another lane); its
    lease is taken over, and the message left to the sweep if it lapsed while it waited.
    ``hand_on(row, holder)``: True when a message claimed here went on elsewhere with its lease (a photo
    out of the text lane); the thread stops there, as whoever took it follows the driver from it.
    """
    last = _claim_process_send(runtime, worker_id, only_id=first_id, leased_by=leased_by, hand_on=hand_on)
    done = 0
    with log_context(None):  # the next ones came in pushes of their own: not under the first one's request id
        while last is not None:  # bounded: at most 1 + follow rounds
            done += 1
            if done > follow:
                break
            last = _claim_process_send(runtime, worker_id, openid=openid, after_id=last, hand_on=hand_on)
    return done


def _claim_process_send(runtime: Runtime, worker_id: str, *, only_id: int | None = None,
                        openid: str | None = None, after_id: int | None = None, leased_by: str | None = None,
                        hand_on: inbox.HandOn | None = None, oldest_first: bool = False) -> int | None:
    """Claim a message (``only_id``, the next due of ``openid`` after ``after_id``, or the next due; with
    ``leased_by``, take over that holder's lease on ``only_id`` if it is still live), process it, then send
    at once what is due for the people it wrote to (dispatch.dispatch_after_change): the next message must
    not wait behind other people's backlog. ``oldest_first``: see :func:`inbox.claim_due`. Returns the id
    processed, None if none was due or it was handed on."""
    with outbox.recipients_written() as recipients:
        if leased_by is not None and only_id is not None:
            ids = [only_id] if inbox.take_over(runtime, only_id, leased_by, worker_id) else []
        else:
            ids = inbox.claim_due(runtime, worker_id, limit=1, only_id=only_id, openid=openid, after_id=after_id,
                                  oldest_first=oldest_first)
        processed = [message_id for message_id in ids
                     if inbox.process(runtime, message_id, worker_id, handle_inbound, tell_sender_it_was_lost,
                                      hand_on=hand_on) != "handed_on"]
    dispatch.dispatch_after_change(runtime, worker_id, recipients)
    return processed[0] if processed else None


def handle_inbound(runtime: Runtime, row: InboundMessage, worker_id: str) -> None:
    message = parse_inbound(row.payload)
    prepared = None
    if getattr(message, "type", "") in PHOTO_TYPES:
        prepared = _prepare_photo(runtime, row, message)
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        # What the person did opens the platform's allowance for texts to them (WECHAT.md §5): known
        # before their reply is dispatched, and what waited for them can go now.
        if allowance.record_action(session, row.openid, allowance.action_of(message), row.received_at):
            dispatch.release_held(session, row.openid, now)
        if row.msg_type == inbox.TEMPLATE_RESULT:  # what became of a template sent to them
            if dispatch.template_result(session, row.openid, int(message.id or 0), str(message.status or ""),
                                        received_at=row.received_at, now=now) is dispatch.TemplateResult.TOO_EARLY:
                raise inbox.RetryLater("a template's result came before its send was recorded")
        # Only a retry can find it: the notice is written by the attempt that met the outage.
        told_saving = row.attempts > 1 and outbox.is_written(session, _saving_key(row))
        Conversation(session, runtime, message, row, now).run(prepared, told_saving=told_saving)
        inbox.finish(session, row, worker_id, now)


def download_timeout(settings) -> float:
    """Bounds each socket wait and the whole download of one photo, in seconds."""
    return DOWNLOAD_TIMEOUT_FACTOR * settings.WECHAT_API_TIMEOUT_SECONDS


def _prepare_photo(runtime: Runtime, row: InboundMessage, message) -> PreparedPhoto | PhotoForClosedCase:
    case_no = _case_no_for_photo(runtime, row, message)
    if isinstance(case_no, PhotoForClosedCase):
        return case_no  # nothing to download: it goes to no case
    media_id = str(message.media_id)
    settings = runtime.settings
    if row.waiting_until is not None:
        # Waiting out an outage, tried every minute: the store is asked first (one HEAD), rather than the photo
        # downloaded again, up to PHOTO_MAX_BYTES each time, for a store that still could not keep it (review).
        try:
            runtime.store.check()
        except StorageUnavailable as exc:
            raise _waiting_out_an_outage(runtime, row, message, "storage unavailable") from exc
    try:
        media = runtime.wechat.download_media(media_id, max_bytes=settings.PHOTO_MAX_BYTES,
                                              timeout=download_timeout(settings))
    except MediaTooLarge:
        # The stream was cut at the cap: nothing of it is kept, so no object either.
        return refused_before_inspection(media_id, row.received_at, "too_large", case_no=case_no,
                                         max_mb=f"{round(settings.PHOTO_MAX_BYTES / 2**20, 1):g}")
    except WeChatApiError as exc:
        if exc.permanent:
            # The platform has no file for this id (expired, or never uploaded), or a link rather than a photo.
            code = "media_unavailable" if exc.errcode is not None else "not_an_image"
            return refused_before_inspection(media_id, row.received_at, code, case_no=case_no)
        reason = f"wechat {exc.errcode}: {exc.errmsg}"
        if exc.retryable:  # busy, quota, token, network, 5xx: the platform's outage
            raise _waiting_out_an_outage(runtime, row, message, reason) from exc
        # Neither (40125 bad AppSecret, 40164 IP not allowed, an unknown code): the operator's to fix, so the
        # attempts stay bounded, and the driver is asked to resend once they are spent (a photo waiting out an
        # outage keeps its deadline: inbox._schedule_retry).
        raise inbox.RetryLater(reason) from exc
    try:
        return prepare_photo(runtime, media.data, media_id=media_id, case_no=case_no, received_at=row.received_at)
    except StorageUnavailable as exc:
        raise _waiting_out_an_outage(runtime, row, message, "storage unavailable") from exc


def _waiting_out_an_outage(runtime: Runtime, row: InboundMessage, message, reason: str) -> inbox.RetryLater:
    """What a photo needs is down (the platform's download, or the evidence store): it is tried again for as long
    as a quiet draft lives, past INBOX_MAX_ATTEMPTS, with the driver's texts going past it meanwhile, and once its
    retry (5 s on) meets the outage too, the driver is told, once, that it is being saved. Resending would
    not help them: the platform keeps the file for three days (WECHAT.md §6), and a resent photo meets the same
    outage. A blip the first retry outlasts costs them no message: their photo is answered 5 s late."""
    _photo_waits(runtime, row, message)
    patience = timedelta(minutes=runtime.settings.DRAFT_EXPIRY_MINUTES)
    return inbox.RetryLater(reason, keep_trying_until=row.received_at + patience)


def _case_no_for_photo(runtime: Runtime, row: InboundMessage, message) -> str | PhotoForClosedCase:
    """The open case the photo belongs to; a photo with no case starts one (committed first). A photo sent for
    a case that has closed since (its sender's texts go past a photo waiting out an outage, a withdrawal among
    them) belongs to none (lifecycle.closed_after)."""
    with runtime.unit_of_work() as session:
        found = cases.open_case_for(session, str(message.source))
        # No query when they were in their open case already when the photo came: the common path.
        closed = lifecycle.closed_after(session, str(message.source), row.received_at,
                                        open_case=found[0] if found else None)
        if closed is not None:
            return PhotoForClosedCase(closed.case_no)
        if found:
            return found[0].case_no
        case, _party, _ = parties.start_case(session, openid=str(message.source),
                                           language=preferences.language_of(session, str(message.source)),
                                           settings=runtime.settings,
                                           now=runtime.clock.now())
        return case.case_no


#: Events a driver causes and can repeat (a menu click, a QR scan).
DRIVER_ACTIONS = ("click", "scan", "subscribe_scan")


def tell_sender_it_was_lost(session, row: InboundMessage, now: datetime) -> None:
    """The message failed for good: ask the driver to send it again rather than leave them waiting."""
    message = parse_inbound(row.payload)
    if getattr(message, "type", "") == "event" and getattr(message, "event", "") not in DRIVER_ACTIONS:
        return  # a follow, a location report, a delivery receipt: nothing the driver could redo
    key = "conv.photo_lost" if getattr(message, "type", "") in PHOTO_TYPES else "conv.message_lost"
    _reply(session, str(message.source), cases.open_case_for(session, str(message.source)), key,
           dedupe_key=f"lost:{row.id}", now=now)


def _photo_waits(runtime: Runtime, row: InboundMessage, message) -> None:
    """From the photo's first wait its sender's draft counts it as activity, so the draft outlives the wait (and
    does not expire in the seconds before the retry); once the retry meets the outage too, the driver is told,
    once. Counted in waits, not attempts: an attempt its worker died in, or one refused for the operator to fix,
    was no wait, and a blip after it must cost the driver no message either."""
    first_wait = row.waiting_until is None
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        found = cases.open_case_for(session, str(message.source), for_update=True)
        if not first_wait:
            _reply(session, str(message.source), found, "conv.photo_saving", dedupe_key=_saving_key(row), now=now)
        elif found is not None:
            cases.touch(found[0], runtime.settings, now)


def _reply(session, openid: str, found: tuple[Case, Party] | None, key: str, *, dedupe_key: str,
           now: datetime) -> int | None:
    """A reply outside a conversation, in the driver's language; the outbox id, or None if already written."""
    language = preferences.language_for(session, openid, found[1] if found else None)
    return enqueue(session, openid=openid, kind=REPLY_KIND, text=messages.text(key, language), dedupe_key=dedupe_key,
                   now=now, case_id=found[0].id if found else None, language=language)


def _saving_key(row: InboundMessage) -> str:
    return f"saving:{row.id}"
