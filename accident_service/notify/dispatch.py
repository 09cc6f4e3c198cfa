"""The outbox dispatcher: each message to the person it is for, by the first channel that can carry it now.

Each row is leased (accident_service.leases), so several schedulers and the
web pool dispatch at once, one row per person at a time and in order. For a
row the dispatcher decides, before calling anyone (WECHAT.md §5):

1. a WeChat customer-service text, if the person's allowance (notify.allowance)
   has a send left — taken before the call;
2. else a template message, if one is configured for the notice's kind
   (``WECHAT_TEMPLATE_<KIND>``; five keywords of at most 20 characters, and
   ``client_msg_id`` = the outbox dedupe key);
3. else, for a must-read notice (:data:`MUST_READ`), an SMS to the party's
   mobile (``SMS_*`` settings; off unless configured);
4. else it waits, ``held``: "waiting for the person", in the metrics and on
   the desk; the person's next action releases it (wechat.processing).

Notes about the other driver's progress (:data:`FOLDED`) never go alone: they
are held and carried as the first line of the person's next text.

Delivery: the row records its channel, address and ``sending_at`` (committed)
just before the provider is called. If a worker dies during the call, the
next attempt finds ``sending_at`` set: a template is sent again with the same
``client_msg_id`` (the platform drops the repeat), a text or an SMS is not —
neither provider can drop a repeat, and a person told twice is worse than
the rare case of the call never having left (README, "Notices"). A template
whose call got no answer (a timeout, a gateway's error status; not an error
code, which says the platform took nothing) keeps its mark too.
While the platform still drops the repeat, such a template goes again as
itself first, whatever else could carry it now: a card that may have reached
the person, then a text, would tell them twice (:func:`_repeat_dropped`).
Transient errors retry with backoff, cut short once the provider is back
(:func:`bring_forward_after_recovery`); an allowance the platform says is spent
or closed (45047, 45015) or a person who does not follow (43004) sends the row
back for another channel; permanent errors end it ``failed`` with the reason.
A template the platform took but did not deliver (its result push says so) is
sent back the same way, later (:func:`template_result`).
Notices about a case are stored as facts and rendered here (notify.notices)
in the language the party has when it is sent; replies are stored as text.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from accident_service import leases, metrics
from accident_service.cases import lifecycle
from accident_service.cases.parties import JOIN_SCENE_PREFIX
from accident_service.db import error_name, is_postgres, may_succeed_later, run_prebuilt, tried_through_a_blip
from accident_service.models import Case, Notification, Party, ProviderFailure, WorkStatus
from accident_service.notice_kinds import MUST_READ, NOTICE_KINDS
from accident_service.notify import allowance, notices
from accident_service.notify.channels import (
    PROVIDER_OF,
    SMS_CHANNEL,
    Channel,
    DeliveryError,
    Rendered,
    WeChatTemplate,
    WeChatText,
)
from accident_service.outbox import JOIN_QR_PLACEHOLDER, note_recipients
from accident_service.runtime import Runtime
from accident_service.wechat_api.client import WeChatApiError

log = logging.getLogger(__name__)

#: Progress about the other driver: folded into the person's next message, never sent alone.
FOLDED = frozenset({"joined"})
UNCONFIRMED = "delivery unconfirmed: the dispatcher stopped while sending (not sent again: no duplicate)"
WAITING = "waiting for the person: no WeChat allowance, no template or SMS for it"
MOOT = "not sent: a later notice about the case went to them"
# The other last_error texts the dispatcher writes, each a prefix of what follows it (the desk puts them in words:
# desk/labels.py).
CARRIED = "carried by their next message"
BAD_PAYLOAD = "bad payload: "  # then the error
TEMPLATE_NOT_DELIVERED = "template not delivered: "  # then the platform's status
AND_MOOT = "; not sent again: a later notice about the case went to them"  # after a template's status


@dataclass(frozen=True)
class Route:
    channel: Channel
    address: str
    taken: allowance.Taken | None = None  # the send of the person's allowance taken for it (a text)


#: How long a provider must have gone without a transient failure before what backs off is tried at once: a
#: platform still failing now and then must not have every waiting notice tried at each of its good moments.
RECOVERY_QUIET = timedelta(seconds=10)
#: With nothing delivered since a provider's latest failure, that long after it the oldest notice it failed is tried
#: again, not counted (:func:`bring_forward_after_recovery`): the probe of its recovery, once a minute at most.
PROBE_AFTER = timedelta(minutes=1)


#: Notices sent right after a change or a message, at most: the rest wait for the dispatcher.
SENDS_RIGHT_AFTER = 20


def dispatch_after_change(runtime: Runtime, worker_id: str, recipients: Collection[str]) -> int:
    """What is due for the people a change (or a message) just wrote to, oldest first, so an earlier notice
    to the same person goes before. Only theirs: other people's are the dispatcher's job, and whatever
    comes next must not wait behind a backlog."""
    return _send_due(runtime, worker_id, limit=SENDS_RIGHT_AFTER, recipients=recipients) if recipients else 0


def dispatch_due(runtime: Runtime, worker_id: str, *, limit: int = 50) -> int:
    """The dispatcher's sweep: give up on notifications whose worker died on their last attempt, then send
    up to ``limit`` due ones, oldest first; returns how many were handled.

    Delivery failures are recorded on the rows, never raised; database errors propagate.
    """
    with runtime.unit_of_work() as session:
        now = runtime.clock.now()
        leases.fail_exhausted(session, Notification, now=now, max_attempts=runtime.settings.OUTBOX_MAX_ATTEMPTS)
        bring_forward_after_recovery(session, now, max_attempts=runtime.settings.OUTBOX_MAX_ATTEMPTS)
    return _send_due(runtime, worker_id, limit=limit)


def bring_forward_after_recovery(session: Session, now: datetime, *, max_attempts: int) -> int:
    """What waits out a backoff after a provider's transient failure is due now, once that provider has
    delivered since its latest such failure and that failure is :data:`RECOVERY_QUIET` old; returns how many.

    A backoff doubles through an outage (up to 10 minutes), so without this a driver waiting at the
    roadside for "you may leave" would get it minutes after the platform is back, unless they write again
    (:func:`release_held`). A try brought forward counts like any other: a notice that fails whatever the
    platform does still ends after its attempts. Only rows the provider failed are brought forward (not one
    our own code failed), and only those that failed by the latest failure read here (one failing meanwhile
    keeps its backoff). The proof of a delivery is a notice done through the provider that was not due before
    the failure (it cannot have been sent before it), read from the index the claims use. With no such proof
    :data:`PROBE_AFTER` after the failure (a quiet hour: nothing else goes out), the oldest notice the provider
    failed is tried at once: its try is the probe, which, failing, starts the minute again, and, going out, is the
    proof. It is not counted, as a driver's action would have it (:func:`release_held`), while the notice is younger
    than the span its counted tries would take (:func:`_probes_counted_from`): each failed probe starts the
    notice's backoff again, so its counted tries would otherwise never come, and it would never end. The
    dispatcher's sweep runs this (every 2 s), never a send: nothing on the hot path.
    """
    brought = probes = 0
    for provider, since in session.execute(select(ProviderFailure.provider, ProviderFailure.last_failure_at)):
        if now - since < RECOVERY_QUIET:
            continue
        params = {"channels": sorted(channel for channel, owner in PROVIDER_OF.items() if owner == provider),
                  "since": since, "now": now}
        brought_now = session.execute(_bring_forward_statement(), params).rowcount
        if not brought_now and now - since >= PROBE_AFTER:
            probes += session.execute(_probe_statement(), {
                **params, "probed_from": since + PROBE_AFTER,
                "counted_from": now - _probes_counted_from(max_attempts)}).rowcount
        brought += brought_now
    if brought:
        log.info("%d notices waiting out a backoff brought forward: their provider delivers again", brought)
    if probes:
        log.info("the oldest notice waiting out a provider's failure tried again: nothing has gone out since")
    return brought + probes


def _note_provider_failure(session: Session, provider: str, now: datetime) -> None:
    """The provider's latest transient failure is ``now`` (unless a later one is recorded already)."""
    run_prebuilt(session, _provider_failure_statement(is_postgres(session)), {"provider": provider, "now": now})


def _backing_off(columns, now):
    """Waiting out a backoff after a failed try (a try not yet due)."""
    return and_(columns.status == WorkStatus.PENDING, columns.attempts > 0, columns.next_attempt_at > now)


def _failed_by_the_provider(columns, channels, since):
    """Last tried through one of the provider's ``channels``, and failed by it (a transient fault of its own, not of
    our code) by ``since``."""
    return and_(columns.channel.in_(channels), columns.last_failure_at <= since)


@functools.cache
def _bring_forward_statement():
    """Built once (every sweep may run it): the rows the provider failed by ``since``, if it delivered since."""
    columns = Notification.__table__.c
    now = bindparam("now", type_=columns.next_attempt_at.type)
    since = bindparam("since", type_=columns.last_failure_at.type)
    channels = bindparam("channels", expanding=True)
    done = Notification.__table__.alias("delivered")
    delivered_since = exists().where(done.c.status == WorkStatus.DONE, done.c.next_attempt_at > since,
                                     done.c.channel.in_(channels), done.c.last_error.is_(None))
    return (update(Notification.__table__)
            .where(_backing_off(columns, now), _failed_by_the_provider(columns, channels, since), delivered_since)
            .values(next_attempt_at=now))


def _probes_counted_from(max_attempts: int) -> timedelta:
    """The span of a notice's counted tries through an outage (the backoffs between them): a probe of a notice
    older than this counts, so one that fails whatever the platform does still ends after its attempts."""
    return sum((leases.backoff(attempt) for attempt in range(1, max_attempts)), timedelta())


@functools.cache
def _probe_statement():
    """Built once: the oldest notice the provider failed by ``since``, due now, not counted while younger than
    ``counted_from``, unless a try of one it failed is due or under way already (that try is the probe).

    Due from ``probed_from`` (``since`` + PROBE_AFTER), which every sweep allowed to probe has reached, not from the
    sweep's own clock: another sweep's UPDATE of the same row, waiting on its lock, checks the row again once this
    one commits, and finds it no longer backing off, whichever clock is ahead (review: two schedulers took the
    attempt back twice).
    And after ``since``: a probe that goes out is the proof of a delivery since the failure (a notice done that was
    due after it), so what waits goes at the next sweep but one (review: due from ``since`` it proved nothing, and
    the backlog went one probe a sweep)."""
    table = Notification.__table__
    columns = table.c
    now = bindparam("now", type_=columns.next_attempt_at.type)
    since = bindparam("since", type_=columns.last_failure_at.type)
    channels = bindparam("channels", expanding=True)
    waiting = table.alias("waiting")
    oldest = (select(waiting.c.id).where(_failed_by_the_provider(waiting.c, channels, since),
                                         _backing_off(waiting.c, now))
              .order_by(waiting.c.id).limit(1).scalar_subquery())
    tried = table.alias("tried")
    try_under_way = exists().where(_failed_by_the_provider(tried.c, channels, since), or_(
        tried.c.status == WorkStatus.PROCESSING, and_(tried.c.status == WorkStatus.PENDING,
                                                      tried.c.next_attempt_at <= now)))
    counted_from = bindparam("counted_from", type_=columns.created_at.type)
    probed_from = bindparam("probed_from", type_=columns.next_attempt_at.type)
    return (update(table).where(columns.id == oldest, _backing_off(columns, now), ~try_under_way)
            .values(next_attempt_at=probed_from,
                    attempts=case((columns.created_at > counted_from, columns.attempts - 1), else_=columns.attempts)))


@functools.cache
def _provider_failure_statement(postgres: bool):
    table = ProviderFailure.__table__
    insert = (postgresql.insert if postgres else sqlite.insert)(table).values(
        provider=bindparam("provider"), last_failure_at=bindparam("now", type_=table.c.last_failure_at.type))
    return insert.on_conflict_do_update(index_elements=["provider"],
                                        set_={"last_failure_at": insert.excluded.last_failure_at},
                                        where=table.c.last_failure_at < insert.excluded.last_failure_at)


def _send_due(runtime: Runtime, worker_id: str, *, limit: int, recipients: Collection[str] | None = None) -> int:
    """Claim and send due notifications one at a time (``recipients``: only theirs); how many were handled."""
    handled = 0
    for _ in range(limit):
        ids = _claim_one(runtime, worker_id, recipients)
        if not ids:
            break
        _dispatch_one(runtime, ids[0], worker_id)
        handled += 1
    return handled


def _claim_one(runtime: Runtime, worker_id: str, recipients: Collection[str] | None) -> list[int]:
    settings = runtime.settings
    return leases.claim_as_own_transaction(
        runtime.single_statement, runtime.clock.now, Notification, worker_id,
        lease_seconds=settings.INBOX_LEASE_SECONDS, limit=1, max_attempts=settings.OUTBOX_MAX_ATTEMPTS,
        recipients=recipients)


def _dispatch_one(runtime: Runtime, notification_id: int, worker_id: str) -> None:
    now = runtime.clock.now()
    try:
        prepared = _prepare_send(runtime, notification_id, worker_id, now)
    except SQLAlchemyError as exc:
        if not may_succeed_later(exc):
            raise
        # Nothing went out: given back at once rather than left leased, the recipient's later notices behind it,
        # until the lease lapses.
        error = f"database: {error_name(exc)}"
        tried_through_a_blip(lambda: _give_back_unsent(runtime, notification_id, worker_id, now, error))
        return
    if prepared is None:
        return
    row, rendered, route, notes = prepared
    try:
        rendered = _with_notes_and_qr(runtime, row, rendered, notes)
        platform_msgid = route.channel.send(route.address, rendered, dedupe_key=row.dedupe_key)
    except DeliveryError as exc:
        _after_failure(runtime, row, worker_id, route, exc)
        return
    except Exception as exc:  # a bug must not abort the batch nor leave the row leased until it lapses
        log.exception("notification %s (%s) failed unexpectedly", row.id, row.kind)
        _after_failure(runtime, row, worker_id, route,
                       DeliveryError(route.channel.name, repr(exc), retryable=True, provider_fault=False))
        return
    sent_at = runtime.clock.now()

    def record_sent() -> None:
        with runtime.unit_of_work() as session:
            if _finish(session, row, worker_id, WorkStatus.DONE, "sent", channel=route.channel.name, sent_at=sent_at,
                       last_error=None, platform_msgid=platform_msgid) and notes:
                session.execute(update(Notification).where(Notification.id.in_([n.id for n, _ in notes]))
                                .values(status=WorkStatus.DONE, carried_by=row.id, sent_at=sent_at,
                                        channel=route.channel.name, address=route.address, last_error=None)
                                .execution_options(synchronize_session=False))

    tried_through_a_blip(record_sent)


def _prepare_send(runtime: Runtime, notification_id: int, worker_id: str, now: datetime
                  ) -> tuple[Notification, Rendered, Route, list[tuple[Notification, str]]] | None:
    """The leased notice, rendered, its route and the notes it carries, marked as being sent (one transaction);
    None when there is nothing to send: our lease lapsed, or the notice was settled here (unconfirmed, held,
    failed)."""
    with runtime.unit_of_work() as session:
        row = session.get(Notification, notification_id)
        if row is None or row.leased_by != worker_id or row.status is not WorkStatus.PROCESSING:
            return None  # taken over (our lease lapsed) or gone: sending now could send it twice
        if row.sending_at is not None and row.channel != WeChatTemplate.name:
            _finish(session, row, worker_id, WorkStatus.DONE, "unconfirmed", sent_at=row.sending_at,
                    last_error=UNCONFIRMED)
            return None
        if row.kind in NOTICE_KINDS and _superseded(session, row):
            # One that waited for the person (held, or backing off) while a later one reached them: what it says
            # no longer holds (README, "Notices": the slot list's "ready" after the booking, a check-in after the
            # case closed), and it would come as a message of its own beside their answer (acceptance pass).
            _finish(session, row, worker_id, WorkStatus.DROPPED, "superseded", last_error=MOOT)
            return None
        if row.kind in FOLDED:
            _finish(session, row, worker_id, WorkStatus.HELD, "held", last_error=CARRIED)
            return None
        try:
            rendered = render(session, row)
        except (KeyError, ValueError) as exc:  # a malformed payload will never send: give up visibly
            _finish(session, row, worker_id, WorkStatus.FAILED, "failed", last_error=f"{BAD_PAYLOAD}{exc}")
            return None
        route = _route(session, runtime, row, rendered, now)
        if route is None:
            _finish(session, row, worker_id, WorkStatus.HELD, "held", last_error=WAITING)
            return None
        notes = _folded_notes(session, row) if route.channel.name == WeChatText.name else []
        # A template's earlier mark keeps its time while the platform drops its repeat (that window runs from that
        # send); any other mark is this attempt's own (review: a text's mark under a template's time was recorded
        # unconfirmed, never sent; a fresh card inherited a window already over). The row is ours (leased), and a
        # template's result leaves a notice being sent alone (TOO_EARLY), so what was read here still holds.
        kept = route.channel.name == WeChatTemplate.name and _repeat_dropped(row, now)
        run_prebuilt(session, _mark_sending(), {"row_id": row.id, "channel": route.channel.name,
                                                "address": route.address,
                                                "sending_at": row.sending_at if kept else now})
        session.expunge(row)
        return row, rendered, route, notes


def _repeat_dropped(row: Notification, now: datetime) -> bool:
    """Whether ``row`` may have gone as a template already (an earlier attempt's mark) and the platform would still
    drop it as a repeat of its ``client_msg_id``: counted from the first attempt that may have gone (a later one
    keeps that mark, :func:`_prepare_send`)."""
    return (row.sending_at is not None and row.channel == WeChatTemplate.name
            and now - row.sending_at < WeChatTemplate.repeats_dropped_for)


def _give_back_unsent(runtime: Runtime, notification_id: int, worker_id: str, now: datetime, error: str) -> None:
    """Our lease on a notice that did not go out ended, due again now. The mark of a send under way that this
    attempt wrote (its time is ``now``: the failed transaction's COMMIT may have been kept unseen) is cleared, so
    the next attempt sends it rather than record it as unconfirmed; the turn of the allowance that attempt spent
    then stays spent (one text fewer, never one more). A mark of an earlier attempt, whose worker died while
    sending, is kept: a text or an SMS that may have gone is then recorded unconfirmed, never sent again (a
    template is sent again with its client_msg_id, as after any such death)."""
    with runtime.unit_of_work() as session:
        if leases.complete(session, Notification, notification_id, worker_id, status=WorkStatus.PENDING,
                           next_attempt_at=now, last_error=error):
            run_prebuilt(session, _clear_own_mark(), {"row_id": notification_id, "marked_at": now})


@functools.cache
def _clear_own_mark():
    table = Notification.__table__
    return (update(table).where(table.c.id == bindparam("row_id"),
                                table.c.sending_at == bindparam("marked_at", type_=table.c.sending_at.type))
            .values(sending_at=None, channel=None, address=None))


def release_held(session: Session, openid: str, now) -> int:
    """The person acted, so the platform allows texts again: what waited for them goes out now (oldest first).

    That is what was held for them (no channel could carry it), and what waits out a retry after a failed
    attempt: a notice backing off holds back every later one to the same person (their order), so after a
    platform outage their answer would otherwise wait minutes for it. The try brought forward is not
    counted against the limit (nor does it shorten the backoff): a driver writing during an outage must
    not spend, in seconds, the attempts that its backoff spreads over minutes. Notes about the other
    driver stay held: the next text carries them. Returns how many were released or brought forward.
    """
    released = run_prebuilt(session, _release_statement(), {"recipient": openid, "now": now}).rowcount
    if released:
        note_recipients((openid,))
    return released


class TemplateResult(enum.Enum):
    """What a template's result event did to the notice it names (:func:`template_result`)."""

    KEPT = "kept"  # nothing sent back: it reached them, it names no notice of theirs, or a later one made it moot
    SENT_BACK = "sent_back"  # it did not reach them: the notice goes another way
    TOO_EARLY = "too_early"  # a template to them is still being sent: the event may be about it, read it later


#: The status of a template's result event (TEMPLATESENDJOBFINISH) when it reached the person (WECHAT.md §5).
TEMPLATE_DELIVERED = "success"


def template_result(session: Session, openid: str, msgid: int, status: str, *, received_at: datetime,
                    now: datetime) -> TemplateResult:
    """The platform's word on a template it took for ``openid`` (its TEMPLATESENDJOBFINISH push, naming the msgid,
    received at ``received_at``).

    Anything but ``success`` (``failed:user block``: they turned the account's messages off; ``failed:system
    failed``) means the person never saw it: no template is tried for them until their next action
    (allowance.templates_failed), and the notice it carried is sent again another way, as if it had never gone:
    an SMS for a must-read notice where one is configured, else it waits for the person, whose next action lets
    a text carry it. Unless a later notice about the case has reached them since: that one is what holds now
    (a booking notice must not come after the cancellation), and this one is dropped, the failure noted.
    Only the sender's own notice: the push comes from their openid.
    """
    if status == TEMPLATE_DELIVERED:
        return TemplateResult.KEPT
    # One statement: a send recorded between two reads would be seen by neither (still being sent in the
    # first, not yet done in the second). Its lock keeps the claims (SKIP LOCKED) off a notice waiting to go again
    # as a template whose call got no answer, until it is freed below (review: claimed between a read and an
    # update, its repeat was dropped unseen and recorded sent).
    rows = session.scalars(select(Notification).where(
        Notification.openid == openid, Notification.channel == WeChatTemplate.name,
        or_(and_(Notification.status == WorkStatus.DONE, Notification.platform_msgid == msgid),
            and_(Notification.status == WorkStatus.PROCESSING, Notification.sending_at.is_not(None)),
            and_(Notification.status.in_((WorkStatus.PENDING, WorkStatus.HELD)),
                 Notification.sending_at <= received_at)))
        .with_for_update()).all()
    named = [row for row in rows if row.status is WorkStatus.DONE]
    if not named and any(row.status is WorkStatus.PROCESSING for row in rows):
        return TemplateResult.TOO_EARLY  # the push overtook the record of its send
    allowance.templates_failed(session, openid, received_at, now)
    if not named:
        # A template whose call got no answer has no msgid recorded: this may be its result. Sent again, it
        # would be dropped as a repeat and recorded sent, unseen (review): it is no longer held to the template.
        unanswered = [row for row in rows if row.status is not WorkStatus.PROCESSING]
        for row in unanswered:
            row.sending_at, row.next_attempt_at = None, now
        if unanswered:
            note_recipients((openid,))
            return TemplateResult.SENT_BACK
        log.warning("a template's result (%s) names no notice sent as a template", status)
        return TemplateResult.KEPT
    sent_back = False
    for row in named:
        error = f"{TEMPLATE_NOT_DELIVERED}{status}"
        if _superseded(session, row):  # no longer true, and never seen: dropped, as a reminder for a moved visit is
            row.status, row.sent_at = WorkStatus.DROPPED, None
            row.last_error = f"{error}{AND_MOOT}"[:500]
            metrics.count_on_commit(session, metrics.SENDS.labels(WeChatTemplate.name, row.kind, "superseded"))
            continue
        row.status, row.attempts, row.next_attempt_at = WorkStatus.PENDING, 0, now
        row.channel = row.address = row.sending_at = row.sent_at = row.platform_msgid = None
        row.last_error = error[:500]
        sent_back = True
        metrics.count_on_commit(session, metrics.SENDS.labels(WeChatTemplate.name, row.kind, "not_delivered"))
        log.warning("notification %s (%s) not delivered as a template (%s): sent another way", row.id, row.kind,
                    status)
    if sent_back:
        note_recipients((openid,))
    return TemplateResult.SENT_BACK if sent_back else TemplateResult.KEPT


#: Notices that say what the case's appointment is now: once a later one has gone to the person, an earlier one
#: would tell them what no longer holds (a booking after its cancellation, the old time after a move). What only
#: the earlier one said (the booking's "you may leave the scene") no longer matters by then.
VISIT_STATE = frozenset({"booked", "rescheduled", "cancelled", "confirmed", "checked_in", "reminder"})
#: Notices from before the visit was set (the other driver joined; the case is ready, a slot to pick): once one
#: about the visit has gone to the person, they tell nothing that still holds.
BEFORE_THE_VISIT = frozenset({"joined", "ready"})


def _superseded(session: Session, row: Notification) -> bool:
    """Whether a later notice about ``row``'s case that makes it moot has gone to its person (sent, whatever the
    channel: a template of theirs that fails as well is sent back by its own result, and says what holds now), or
    may have: a template whose call got no answer, whose repeat the platform would drop (review: the booking sent
    back went after a cancellation card that had reached them)."""
    # Once the case has closed, nothing earlier about it matters.
    moot_after = lifecycle.CLOSING_NOTICES | (VISIT_STATE if row.kind in VISIT_STATE | BEFORE_THE_VISIT
                                              else frozenset())
    if row.case_id is None:
        return False
    return session.scalar(select(Notification.id).where(
        Notification.openid == row.openid, Notification.case_id == row.case_id, Notification.id > row.id,
        or_(Notification.status == WorkStatus.DONE,
            and_(Notification.channel == WeChatTemplate.name, Notification.sending_at.is_not(None))),
        Notification.kind.in_(sorted(moot_after))).limit(1)) is not None


@functools.cache
def _release_statement():
    """Built once: every message a driver sends runs it (an UPDATE with CASEs cost more CPU to build than to run)."""
    table = Notification.__table__
    columns = table.c
    now = bindparam("now", type_=columns.next_attempt_at.type)
    held = columns.status == WorkStatus.HELD
    backing_off = _backing_off(columns, now)
    return (update(table)
            .where(columns.openid == bindparam("recipient", type_=columns.openid.type),
                   columns.kind.not_in(sorted(FOLDED)), or_(held, backing_off))
            .values(status=WorkStatus.PENDING, next_attempt_at=now,
                    attempts=case((held, 0), else_=columns.attempts - 1),
                    last_error=case((held, None), else_=columns.last_error)))


def _route(session: Session, runtime: Runtime, row: Notification, rendered: Rendered, now) -> Route | None:
    """The first channel that can carry ``row`` now (see the module's list); None: it waits for the person.

    A template that may have reached them already goes again as itself first while the platform drops the repeat
    (:func:`_repeat_dropped`). Once it no longer does, or if no template can carry it now, whether the first went
    cannot be settled, and it goes by the first channel, as after any call that got no answer: twice is better
    than never for a must-read notice."""
    api = runtime.wechat
    if _repeat_dropped(row, now) and (template := _template_route(session, runtime, row, rendered)):
        return template
    taken = allowance.spend(session, row.openid, now)  # before the call: a crash cannot overspend it
    if taken:
        return Route(WeChatText(api), row.openid, taken=taken)
    if template := _template_route(session, runtime, row, rendered):
        return template
    if row.kind in MUST_READ and runtime.settings.sms_enabled:
        sms_template = runtime.settings.sms_template_for(row.kind)
        phone = _phone_of(session, row)
        if sms_template and phone:
            from accident_service.notify.sms import SmsChannel

            return Route(SmsChannel.from_settings(runtime.settings).for_template(sms_template), phone)
    return None


def _template_route(session: Session, runtime: Runtime, row: Notification, rendered: Rendered) -> Route | None:
    template_id = runtime.settings.template_for(row.kind)
    if template_id and rendered.template_data and allowance.templates_reach(session, row.openid):
        return Route(WeChatTemplate(runtime.wechat, template_id), row.openid)
    return None


def render(session: Session, row: Notification) -> Rendered:
    """What ``row`` says, in every shape a channel needs; a notice in the party's language as it is now.

    Raises KeyError or ValueError for a payload that cannot be rendered.
    """
    payload = row.payload
    if not isinstance(payload, dict):
        raise ValueError(f"the payload is {type(payload).__name__}, not an object")
    if "notice" in payload:
        return notices.render(row.kind, _recipient_language_now(session, row), payload["notice"], at=row.created_at)
    return Rendered(text=str(payload["text"]))


def closing_notice_since(session: Session, openid: str, since: datetime) -> Notification | None:
    """The latest notice written to ``openid`` after ``since`` that told them their case closed (completed,
    withdrawn, expired, no-show), whatever became of it: a template card shows 20 characters of the officer's
    note, so a driver asking where things stand reads it whole (conversation's status)."""
    return session.scalar(select(Notification).where(
        Notification.openid == openid, Notification.kind.in_(sorted(lifecycle.CLOSING_NOTICES)),
        Notification.created_at > since).order_by(Notification.id.desc()).limit(1))


def message_of(row: Notification) -> Rendered:
    """What ``row`` says in the language it was written in (tests and the desk read it this way)."""
    payload = row.payload
    if isinstance(payload, dict) and "notice" in payload:
        return notices.render(row.kind, row.language, payload["notice"], at=row.created_at)
    if not isinstance(payload, dict):
        raise ValueError(f"the payload is {type(payload).__name__}, not an object")
    return Rendered(text=str(payload["text"]))


def _recipient_language_now(session: Session, row: Notification) -> str:
    """The party's language as it is now, else the row's: a driver may switch while the notice waits."""
    if row.case_id is None:
        return row.language
    now = session.scalar(select(Party.language).where(Party.case_id == row.case_id, Party.openid == row.openid))
    return now or row.language


def _phone_of(session: Session, row: Notification) -> str | None:
    if row.case_id is None:
        return None
    return session.scalar(select(Party.phone).where(Party.case_id == row.case_id, Party.openid == row.openid))


def _folded_notes(session: Session, row: Notification) -> list[tuple[Notification, str]]:
    """The held notes about the other driver that this text to the same person carries, oldest first."""
    held = session.scalars(_folded_statement(), {"openid": row.openid, "before_id": row.id}).all()
    notes = []
    for note in held:
        if _superseded(session, note):  # "B joined", read after the booking: nothing they still need
            note.status, note.last_error = WorkStatus.DROPPED, MOOT
            metrics.count_on_commit(session, metrics.SENDS.labels("-", note.kind, "superseded"))
            continue
        try:
            notes.append((note, render(session, note).text))
        except (KeyError, ValueError):
            continue  # stays held and visible; it must not block the message that carries the others
    for note, _ in notes:
        session.expunge(note)
    return notes


@functools.cache
def _mark_sending():
    """Built once: every send runs it (committed just before the provider is called; see the module's notes)."""
    table = Notification.__table__
    return update(table).where(table.c.id == bindparam("row_id")).values(
        {name: bindparam(name, type_=table.c[name].type) for name in ("channel", "address", "sending_at")})


@functools.cache
def _folded_statement():
    """Built once: every text sent runs it, and it mostly finds nothing."""
    return (select(Notification)
            .where(Notification.openid == bindparam("openid"), Notification.status == WorkStatus.HELD,
                   Notification.kind.in_(sorted(FOLDED)), Notification.id < bindparam("before_id"))
            .order_by(Notification.id))


def _with_notes_and_qr(runtime: Runtime, row: Notification, rendered: Rendered,
                       notes: list[tuple[Notification, str]]) -> Rendered:
    text = "\n".join([*(text for _, text in notes), rendered.text])
    if isinstance(row.payload, dict) and row.payload.get("join_qr"):
        try:
            text = text.replace(JOIN_QR_PLACEHOLDER, join_qr_url(runtime, row.case_id))
        except WeChatApiError as exc:
            raise DeliveryError("wechat", f"join QR code: {exc.errmsg}", code=exc.errcode, retryable=True,
                                undelivered=True) from exc
    return Rendered(text=text, template_data=rendered.template_data, sms_params=rendered.sms_params)


def join_qr_url(runtime: Runtime, case_id: int | None) -> str:
    """The link of the case's join QR code, made on first use and kept on the case.

    The code belongs to the case, not to a message: a re-sent invitation shows
    the same code. "-" for a case that is gone or closed (nobody can join it).
    Raises WeChatApiError when the platform cannot make one now.
    """
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id) if case_id is not None else None
        if case is None or case.join_code is None:
            return "-"
        if case.join_qr_url:
            return case.join_qr_url
        code = case.join_code
    qr = runtime.wechat.create_join_qrcode(f"{JOIN_SCENE_PREFIX}{code}", runtime.settings.JOIN_QR_EXPIRE_SECONDS)
    with runtime.unit_of_work() as session:
        session.execute(update(Case).where(Case.id == case_id, Case.join_qr_url.is_(None))
                        .values(join_qr_ticket=qr.ticket, join_qr_url=qr.image_url))
        return session.scalar(select(Case.join_qr_url).where(Case.id == case_id)) or qr.image_url


def _after_failure(runtime: Runtime, row: Notification, worker_id: str, route: Route, exc: DeliveryError) -> None:
    now = runtime.clock.now()
    out_of_attempts = row.attempts >= runtime.settings.OUTBOX_MAX_ATTEMPTS
    error = f"{exc.code}: {exc}" if exc.code is not None else str(exc)  # a transport error has no code
    # Every failed attempt, whatever comes next (tried again, another way, held, given up: the last with a warning of
    # its own): the metrics count them, but a platform answering 45009 all afternoon was in no log (acceptance pass).
    log.info("notification %s (%s) not taken by %s on attempt %s: %s", row.id, row.kind, route.channel.name,
             row.attempts, error)

    def record() -> None:
        with runtime.unit_of_work() as session:
            # What the platform said holds whoever holds the lease now (and is the same written twice); the turn
            # is given back only if the lease was still ours: tried again after a COMMIT kept unseen, it must not
            # be given back twice (a refund stops only at the grant's size).
            if exc.retryable and exc.provider_fault:
                _note_provider_failure(session, PROVIDER_OF[route.channel.name], now)
            ours = _end_failed_attempt(session, row, worker_id, route, exc, error, now=now,
                                       out_of_attempts=out_of_attempts)
            if ours and route.taken is not None and exc.undelivered:
                allowance.refund(session, route.taken, now)
            if exc.reroute and not out_of_attempts:  # after the refund: what the platform said spent stays spent
                allowance.refused(session, row.openid, exc.code if isinstance(exc.code, int) else None, now,
                                  channel=route.channel.name)

    tried_through_a_blip(record)


def _end_failed_attempt(session: Session, row: Notification, worker_id: str, route: Route, exc: DeliveryError,
                        error: str, *, now: datetime, out_of_attempts: bool) -> bool:
    """End our lease on ``row`` after a failed send, with what comes next for it; False if it was not ours.

    The mark of a template an earlier attempt may have delivered stays (``row`` is as read before this attempt's
    own mark, which kept that one's time): what the platform answered this attempt says nothing of that one
    (review: a busy answer to the repeat let the notice go again as a text)."""
    template = route.channel.name == WeChatTemplate.name
    earlier_template = template and _repeat_dropped(row, now)
    # The mark stays, whatever comes next, while the card may have gone: counted by _superseded (review: a
    # cancellation card whose repeat then failed for good no longer kept a failed booking from going after it).
    may_have_gone = earlier_template or (template and exc.unanswered)
    if exc.reroute and not out_of_attempts:
        # Nothing went out: the next attempt chooses again, with what the platform just told us.
        unmarked = {} if earlier_template else {"channel": None, "address": None, "sending_at": None}
        return _finish(session, row, worker_id, WorkStatus.PENDING, "rerouted", tried=route.channel.name,
                       last_error=error, next_attempt_at=now, **unmarked)
    if exc.permanent and route.channel.name == SMS_CHANNEL:
        # This number will never take it (refused, blacklisted, over its daily limit): like a notice no
        # channel can carry, it waits for the person's next action, with the reason shown.
        return _finish(session, row, worker_id, WorkStatus.HELD, "held", tried=SMS_CHANNEL,
                       last_error=f"{WAITING}; {error}", sending_at=None, channel=None, address=None)
    if exc.retryable and not out_of_attempts:
        # A template the call may have delivered keeps its mark: it goes again as itself first (_repeat_dropped).
        return _finish(session, row, worker_id, WorkStatus.PENDING, "retry", tried=route.channel.name,
                       last_error=error, next_attempt_at=now + leases.backoff(row.attempts),
                       last_failure_at=now if exc.provider_fault else None,
                       **({} if may_have_gone else {"sending_at": None}))
    if not _finish(session, row, worker_id, WorkStatus.FAILED, "failed", tried=route.channel.name, last_error=error,
                   **({} if may_have_gone else {"sending_at": None})):
        return False
    metrics.count_on_commit(session, metrics.FAILURES.labels("outbox", metrics.outbox_failure_reason(
        exc.code if isinstance(exc.code, int) else None, permanent=exc.permanent)))
    log.warning("notification %s (%s) not delivered: %s", row.id, row.kind, error)
    return True


def _finish(session: Session, row: Notification, worker_id: str, status: WorkStatus, outcome: str, *,
            tried: str | None = None, **values) -> bool:
    """End our lease on ``row`` with ``status`` (and ``values``); False if the lease was taken over meanwhile.

    ``tried``: the channel this attempt used (the metrics' label), when the row does not record it.
    """
    done = leases.complete(session, Notification, row.id, worker_id, status=status, **values)
    if done:
        metrics.count_on_commit(session, metrics.SENDS.labels(tried or values.get("channel") or row.channel or "-",
                                                              row.kind, outcome))
    return done
