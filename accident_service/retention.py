"""Retention: a case closed for RETENTION_DAYS keeps its facts and loses its photos and personal data.

A case is purged once it is final (completed, cancelled, expired, no-show)
and was closed (``closed_at``; a completed case without one: its last change)
before the cutoff. Then:

* its photos' objects (originals, thumbnails, rejected uploads) are deleted
  from storage first, so no object outlives the key that names it;
* every column in :data:`PERSONAL_DATA` is erased on its rows: the case's,
  its parties', its photos', its notifications';
* its audit events keep who/what/when, and of their before/after values only
  those under :data:`AUDIT_KEPT_KEYS` (masked; the others are emptied);
* ``purged_at`` is set and a ``case.purged`` audit event written.

Then what names a person but belongs to no case, older than the cutoff, whoever
it is about (:func:`_purge_what_no_case_holds`): a driver of no case at all (a
stranger typing join codes), or one whose messages came after their case was
purged, has no case to take it with them. Inbound messages are deleted (the
raw pushes: texts, plates, phones; their facts are in the cases), notices to
nobody's case erased like a case's, events naming an openid (wrong join codes)
lose it, what was kept about a person who is in no case any more (their
language, what the platform allowed us to send them) is deleted, and so are
the answers kept for API callers' retries (an answer names a case's plates and
phones, and its key may be kept longer than a short retention).

Then the objects no photo row names are deleted (:func:`_delete_unnamed_objects`):
what was stored for a photo that never got its row (its message failed for
good after the upload, or a photo refused late whose delete met an outage).
Only once they are a day older than the longest a stored photo can wait for
its row, so nothing on its way is touched.

What stays: case number, status, times, appointments (station, slot), the
evidence fingerprint, each photo's sha256, the audit trail.

Work goes in batches of cases, each with two short transactions (read, then
erase); a case's ``purged_at`` is set in the same transaction as its
erasure, so running it again, or on two schedulers at once, changes nothing
more. A storage failure stops the run before that batch's rows change; what belongs to
no case is purged all the same.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, delete, exists, func, literal, select, union, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from accident_service.cases.service import record_audit
from accident_service.db import is_postgres
from accident_service.logs import mask_personal_data
from accident_service.models import (
    AuditEvent,
    Case,
    CaseStatus,
    DriverPreference,
    IdempotencyKey,
    InboundMessage,
    Notification,
    Party,
    Photo,
    WechatAllowance,
    WorkStatus,
)
from accident_service.photos.intake import EVIDENCE_PREFIX, case_no_of, named_keys
from accident_service.runtime import Runtime
from accident_service.storage import StorageUnavailable

log = logging.getLogger(__name__)

FINAL_STATUSES = (CaseStatus.COMPLETED, CaseStatus.CANCELLED, CaseStatus.EXPIRED, CaseStatus.NO_SHOW)
# What an openid becomes: derived from nothing, so irreversible, and never a real one (those start with "o").
PURGED = "purged"
#: The last error of a notice dropped unsent because its case was purged.
PURGED_UNSENT = "purged by retention before it was sent"
BATCH_SIZE = 100
#: How much older than the longest a stored photo can wait for its row an object no row names must be before it
#: is deleted (_delete_unnamed_objects).
UNNAMED_OBJECT_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class Erase:
    """A column that holds personal data, and the value it gets when its case is purged."""

    column: InstrumentedAttribute[Any]
    becomes: Any = None  # a value, or an SQL expression over the row


#: Every column holding personal data, on the rows of a purged case. A new personal column is one
#: more line here (a column of another table also needs its rows in _rows_of); a new column that is
#: not personal goes in KEPT_COLUMNS. tests/test_retention.py checks both lists cover every column.
PERSONAL_DATA: tuple[Erase, ...] = (
    Erase(Case.location_lat),  # where the accident happened, to the metre
    Erase(Case.location_lng),
    Erase(Case.location_label),
    Erase(Case.join_code),
    Erase(Case.join_qr_ticket),
    Erase(Case.join_qr_url),
    Erase(Party.openid, PURGED),
    Erase(Party.plate),
    Erase(Party.phone),
    Erase(Photo.object_key),  # the objects are deleted first; sha256 stays as proof of what was seen
    Erase(Photo.thumb_key),
    Erase(Photo.media_id),
    Erase(Notification.openid, PURGED),
    # Unique, and a feature may build it from an openid: replaced by one built from the row's id.
    Erase(Notification.dedupe_key, literal("purged:").concat(cast(Notification.id, String))),
    Erase(Notification.payload, {}),  # the text, or the facts of a notice (plates, phones)
    Erase(Notification.last_error),  # WeChat's errors may quote the openid
    Erase(Notification.address),  # the openid or the mobile number it went to
    Erase(Case.outcome_note),  # the officer's words about what happened, which may name people
)

#: Columns of cases and parties that stay after a purge: facts about the case, nobody's personal data.
KEPT_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    Case.id, Case.case_no, Case.status, Case.evidence_fingerprint, Case.version, Case.liability, Case.handled_by,
    Case.created_at, Case.updated_at, Case.last_activity_at, Case.expires_at, Case.closed_at, Case.purged_at,
    Party.id, Party.case_id, Party.role, Party.language, Party.case_open, Party.retake_item, Party.retake_due_at,
    Party.offered_slot_ids, Party.offered_at, Party.pending_action, Party.pending_action_until, Party.joined_at,
)

#: Keys of audit before/after values that say nothing about a person, kept by the purge (their text masked all the
#: same); every other value is emptied. A list of what stays, not of what goes: free text written about a driver
#: (an officer's retake or cancellation reason may name them) and whatever a later change records are personal
#: until listed here (review: a retake reason naming a driver outlived the purge).
AUDIT_KEPT_KEYS = frozenset({"status", "case_no", "joined", "slot_id", "liability", "item", "due_at", "sha256",
                             "replaced", "fingerprint", "retention_days", "requested_at", "confirmed"})


@dataclass
class PurgeReport:
    """What a purge changed (or, with ``dry_run``, would change)."""

    cases: int = 0
    objects: int = 0
    unnamed_objects: int = 0  # stored for a photo that never got its row (see the module's notes)
    photos: int = 0
    notifications: int = 0
    inbound_messages: int = 0
    audit_events: int = 0
    preferences: int = 0
    allowances: int = 0  # what the platform allowed us to send a person in no remaining case
    api_answers: int = 0  # answers kept for an API caller's retries (Idempotency-Key): a case's plates and phones
    cases_kept: int = 0  # due, but kept for the next run: the store could not delete their objects (PurgeStopped)
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class PurgeStopped(StorageUnavailable):
    """The store could not delete a case's objects: the purge stopped at that batch. ``report`` is what it changed
    all the same (the cases before, the objects deleted, what belongs to no case) and ``cases_kept``."""

    def __init__(self, cause: StorageUnavailable, report: PurgeReport) -> None:
        super().__init__(str(cause))
        self.report = report


@dataclass
class _Batch:
    case_ids: list[int]
    object_keys: list[str] = field(default_factory=list)


def purge_closed_cases(runtime: Runtime, *, days: int | None = None, dry_run: bool = False,
                       batch_size: int = BATCH_SIZE) -> PurgeReport:
    """Purge the cases closed more than ``days`` (RETENTION_DAYS) ago; see the module docstring.

    Raises PurgeStopped (a StorageUnavailable, with the report of what was done) when an object cannot be
    deleted: the cases of that batch and after stay as they are, for the next run (``cases_kept``); what belongs
    to no case goes all the same.
    """
    days = runtime.settings.RETENTION_DAYS if days is None else days
    now = runtime.clock.now()
    cutoff = now - timedelta(days=days)
    if dry_run:
        with runtime.unit_of_work() as session:
            report = _count(session, cutoff)
        report.unnamed_objects = _delete_unnamed_objects(runtime, now, dry_run=True)
        return report
    report = PurgeReport()
    after_id = 0
    try:
        while batch := _next_batch(runtime, cutoff, after_id, batch_size):
            after_id = batch.case_ids[-1]
            for key in batch.object_keys:
                runtime.store.delete(key)
                report.objects += 1  # gone, even if the store fails before the batch's last (deleted again then)
            with runtime.unit_of_work() as session:
                _erase(session, batch, cutoff, now, days, report)
    except StorageUnavailable as exc:
        # What belongs to no case needs no store: it goes tonight all the same (a driver whose only case is due but
        # kept for the next run loses tonight what would have gone with it: their language, their allowance).
        _purge_what_no_case_holds(runtime, cutoff, report)
        with runtime.unit_of_work() as session:
            report.cases_kept = session.scalar(select(func.count()).select_from(Case).where(_purgeable(cutoff))) or 0
        log.warning("retention stopped by storage (%s): %s", exc, report.as_dict())
        raise PurgeStopped(exc, report) from exc
    _purge_what_no_case_holds(runtime, cutoff, report)  # after the cases: their drivers' openids are erased by now
    report.unnamed_objects = _delete_unnamed_objects(runtime, now)
    if report.cases or report.unnamed_objects:
        log.info("retention: %s", report.as_dict())
    return report


def _delete_unnamed_objects(runtime: Runtime, now: datetime, *, dry_run: bool = False,
                            batch_size: int = 500) -> int:
    """Delete the photo objects no row names, of cases that have closed, written long enough ago;
    how many (with ``dry_run``, would be). A storage failure ends it with what was done (logged): the next
    night goes on.

    A photo is stored before its row is written, by every attempt of its message (an object is never older
    than its row's last chance by more than one attempt), and the attempts end with the photo's patience for
    an outage (DRAFT_EXPIRY_MINUTES): a day beyond that is a wide margin. Only closed cases' objects: keys are
    content addresses, and an open case may still be sent the same file again, whose row would name the key.
    Retention deletes what rows name, so without this such an object (a photo, personal data) stayed for good.
    """
    written_before = now - timedelta(minutes=runtime.settings.DRAFT_EXPIRY_MINUTES) - UNNAMED_OBJECT_GRACE
    deleted = 0
    try:
        keys = runtime.store.written_before(written_before, prefix=EVIDENCE_PREFIX)
        while batch := list(itertools.islice(keys, batch_size)):
            for key in _unnamed_of_closed_cases(runtime, batch):
                if not dry_run:
                    runtime.store.delete(key)
                deleted += 1
    except StorageUnavailable as exc:
        log.warning("retention: unnamed objects: storage unavailable after %s: %s", deleted, exc)
    return deleted


def _unnamed_of_closed_cases(runtime: Runtime, keys: list[str]) -> list[str]:
    """Of ``keys``, those no photo row names (photos.intake.named_keys) whose case (the one the key names: its
    photo was stored for it) has closed. A key of a case this database does not have is kept: the case is
    written before any photo is stored for it and never deleted, so such a key is another database's (a shared
    store) or newer than a restored backup."""
    by_case: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        if (case_no := case_no_of(key)) is not None:
            by_case[case_no].append(key)
    with runtime.unit_of_work() as session:
        closed = session.scalars(select(Case.case_no).where(Case.case_no.in_(list(by_case)),
                                                            Case.status.in_(FINAL_STATUSES))).all()
        candidates = [key for case_no in closed for key in by_case[case_no]]
        named = named_keys(session, candidates)
    return [key for key in candidates if key not in named]


def _purgeable(cutoff: datetime):
    return and_(Case.purged_at.is_(None), Case.status.in_(FINAL_STATUSES),
                func.coalesce(Case.closed_at, Case.updated_at) < cutoff)


def _next_batch(runtime: Runtime, cutoff: datetime, after_id: int, size: int) -> _Batch | None:
    with runtime.unit_of_work() as session:
        case_ids = list(session.scalars(select(Case.id).where(_purgeable(cutoff), Case.id > after_id)
                                        .order_by(Case.id).limit(size)))
        if not case_ids:
            return None
        keys = session.execute(select(Photo.object_key, Photo.thumb_key).where(Photo.case_id.in_(case_ids))).all()
        return _Batch(case_ids, sorted({key for pair in keys for key in pair if key}))


def _rows_of(model: type, case_ids: list[int] | Any):
    """Which rows of ``model`` belong to the purged cases."""
    return Case.id.in_(case_ids) if model is Case else model.case_id.in_(case_ids)  # Party, Photo, Notification


def _erasures_by_model() -> dict[type, dict[str, Any]]:
    by_model: dict[type, dict[str, Any]] = defaultdict(dict)
    for erase in PERSONAL_DATA:
        by_model[erase.column.class_][erase.column.key] = erase.becomes
    return by_model


def _erase(session: Session, batch: _Batch, cutoff: datetime, now: datetime, days: int,
           report: PurgeReport) -> None:
    # Again under lock: another purger may have taken some of these since they were read.
    locked = select(Case.id).where(Case.id.in_(batch.case_ids), _purgeable(cutoff))
    if is_postgres(session):
        locked = locked.with_for_update(skip_locked=True)
    case_ids = list(session.scalars(locked))
    if not case_ids:
        return
    report.photos += session.scalar(select(func.count()).where(Photo.case_id.in_(case_ids),
                                                               Photo.object_key.is_not(None))) or 0
    for model, values in _erasures_by_model().items():
        if model is Notification:
            report.notifications += _erase_notifications(session, _rows_of(Notification, case_ids))
        else:
            session.execute(update(model).where(_rows_of(model, case_ids)).values(values)
                            .execution_options(synchronize_session=False))
    report.audit_events += _scrub_audit(session, AuditEvent.case_id.in_(case_ids))
    session.execute(update(Case).where(Case.id.in_(case_ids)).values(purged_at=now))
    for case_id in case_ids:
        record_audit(session, actor_type="system", actor=None, action="case.purged", case_id=case_id,
                     after={"retention_days": days}, now=now)
    report.cases += len(case_ids)


def _erase_notifications(session: Session, rows: Any) -> int:
    """Erase the personal columns of the notifications ``rows`` selects; how many."""
    # A notice still waiting would go out without its text: it is dropped, with the reason, as a notice no longer
    # true before it went out is; not failed, which an operator's alert on failed deliveries would count.
    waiting = Notification.status.in_((WorkStatus.PENDING, WorkStatus.PROCESSING, WorkStatus.HELD))
    waiting_ids = list(session.scalars(select(Notification.id).where(rows, waiting)))
    changed = session.execute(update(Notification).where(rows).values(_erasures_by_model()[Notification])
                              .execution_options(synchronize_session=False)).rowcount
    session.execute(update(Notification).where(Notification.id.in_(waiting_ids))
                    .values(status=WorkStatus.DROPPED, last_error=PURGED_UNSENT))
    return changed


#: The audit events whose actor is a driver's openid (``case.join_unknown_code``: a wrong join code typed).
OPENID_ACTOR = "wechat"


def _scrub_audit(session: Session, rows: Any) -> int:
    """Scrub the events ``rows`` selects; returns how many were looked at."""
    events = list(session.scalars(select(AuditEvent).where(rows)))
    for event in events:
        before, after = scrub(event.before), scrub(event.after)
        if before != event.before or after != event.after:
            event.before, event.after = before, after
        if event.actor_type == OPENID_ACTOR:
            event.actor = PURGED
    session.flush()
    return len(events)


def _no_case_holds(cutoff: datetime) -> dict[str, Any]:
    """What :func:`_purge_what_no_case_holds` takes, by its report's name: the same rows whether or not the cases
    due tonight have been purged yet (a dry run counts them before)."""
    finished = InboundMessage.status.in_((WorkStatus.DONE, WorkStatus.FAILED))

    def in_no_case(openid: Any) -> Any:  # nobody of a case that stays (a purged case's parties are "purged")
        return ~exists().where(Party.openid == openid, Party.case_id == Case.id, ~_purgeable(cutoff))

    return {
        "inbound_messages": and_(InboundMessage.received_at < cutoff, finished),
        "notifications": and_(Notification.case_id.is_(None), Notification.created_at < cutoff,
                              Notification.openid != PURGED),
        "audit_events": and_(AuditEvent.case_id.is_(None), AuditEvent.actor_type == OPENID_ACTOR,
                             AuditEvent.actor != PURGED, AuditEvent.at < cutoff),
        "preferences": and_(DriverPreference.updated_at < cutoff, in_no_case(DriverPreference.openid)),
        "allowances": and_(WechatAllowance.updated_at < cutoff, in_no_case(WechatAllowance.openid)),
        # An answer is as old as the action it answers, which a case closed at the latest by then: its keys
        # (IDEMPOTENCY_KEY_HOURS, up to 30 days) may outlive a shorter retention (review: plates replayed after
        # their case was purged).
        "api_answers": IdempotencyKey.created_at < cutoff,
    }


def _purge_what_no_case_holds(runtime: Runtime, cutoff: datetime, report: PurgeReport) -> None:
    """What names a person and belongs to no case, older than the cutoff; see the module's notes. In batches, each
    a transaction of its own: the first night after an upgrade finds the whole backlog, which as one statement
    could outlast the database's deadline (DATABASE_ANSWER_TIMEOUT_SECONDS) and be rolled back every night."""
    rows = _no_case_holds(cutoff)

    def deleted(model: type) -> Callable[[Session, Any], int]:
        return lambda session, batch: session.execute(delete(model).where(batch).execution_options(
            synchronize_session=False)).rowcount

    report.inbound_messages += _in_batches(runtime, InboundMessage.id, rows["inbound_messages"],
                                           deleted(InboundMessage))
    report.notifications += _in_batches(runtime, Notification.id, rows["notifications"], _erase_notifications)
    report.audit_events += _in_batches(runtime, AuditEvent.id, rows["audit_events"], _scrub_audit)
    report.preferences += _in_batches(runtime, DriverPreference.openid, rows["preferences"],
                                      deleted(DriverPreference))
    report.allowances += _in_batches(runtime, WechatAllowance.openid, rows["allowances"], deleted(WechatAllowance))
    # By their time: a batch of times takes every answer of those times, each as old (the table is small: answers
    # are forgotten as their keys expire, api.idempotency.forget_expired).
    report.api_answers += _in_batches(runtime, IdempotencyKey.created_at, rows["api_answers"],
                                      deleted(IdempotencyKey))


def _in_batches(runtime: Runtime, key: Any, rows: Any, take: Callable[[Session, Any], int]) -> int:
    """``take(session, batch)`` on the rows ``rows`` selects, BATCH_SIZE of them at a time (by ``key``), each batch
    in a unit of work of its own; how many it took. ``take`` takes its rows out of ``rows`` (deletes them, or
    erases what selects them); a batch it left as it was ends the loop rather than repeating it."""
    oldest = select(key).where(rows).order_by(key).limit(BATCH_SIZE)
    taken = 0
    while True:  # bounded: each round takes what it read, and nothing newer than the cutoff is read
        with runtime.unit_of_work() as session:
            keys = list(session.scalars(oldest))
            took = take(session, key.in_(keys)) if keys else 0
        taken += took
        if not took:
            return taken


def scrub(value: Any) -> Any:
    """An audit value without personal data: what AUDIT_KEPT_KEYS does not list emptied, other text masked."""
    if isinstance(value, dict):
        return {key: scrub(item) if key in AUDIT_KEPT_KEYS else None for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return mask_personal_data(value) if isinstance(value, str) else value


def _count(session: Session, cutoff: datetime) -> PurgeReport:
    """What a purge would change now, counted in one read-only transaction (dry run)."""
    ids = select(Case.id).where(_purgeable(cutoff)).scalar_subquery()
    rest = _no_case_holds(cutoff)

    def count(model: type, *where: Any) -> int:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0

    return PurgeReport(
        dry_run=True,
        cases=count(Case, Case.id.in_(ids)),
        # Each object once, as the purge deletes them (:func:`_next_batch`): a photo sent twice has two rows.
        objects=session.scalar(select(func.count()).select_from(union(
            *(select(key.label("key")).where(Photo.case_id.in_(ids), key.is_not(None))
              for key in (Photo.object_key, Photo.thumb_key))).subquery())) or 0,
        photos=count(Photo, Photo.case_id.in_(ids), Photo.object_key.is_not(None)),
        notifications=count(Notification, _rows_of(Notification, ids)) + count(Notification, rest["notifications"]),
        inbound_messages=count(InboundMessage, rest["inbound_messages"]),
        audit_events=count(AuditEvent, AuditEvent.case_id.in_(ids)) + count(AuditEvent, rest["audit_events"]),
        preferences=count(DriverPreference, rest["preferences"]),
        allowances=count(WechatAllowance, rest["allowances"]),
        api_answers=count(IdempotencyKey, rest["api_answers"]),
    )
