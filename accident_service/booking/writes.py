"""The database side of a booking: the facts its notices need, then every write.

A booking needs what its notices show and hash (the slot's station and time,
the parties, the accepted photos) before it takes the seat, so the notices
are rendered while no slot is locked. On PostgreSQL these facts come with the
case itself: ``cases.open_case_for(..., for_update=True, for_booking=True)`` loads them in its
locked SELECT (:data:`CASE_FACTS_SQL`, for every slot the case was offered),
and the write checks that they still hold (see below). Otherwise they are
read in one SELECT that locks nothing (:func:`read_facts`). Then the notices
are rendered, and only then is the seat taken. From the seat's conditional UPDATE to
COMMIT the slot row is locked and every competing driver waits, so that
stretch holds no Python work and as few round trips as possible:

* PostgreSQL, first booking: one statement of data-modifying CTEs (seat,
  appointment, case, audit event, both notices), each step fed by the row of
  the one before, so a full slot writes nothing at all. With facts loaded
  along with the case, the statement first computes them again and takes the
  seat only if they are unchanged: the locked SELECT may have waited for the
  case lock, and READ COMMITTED evaluates its subqueries in the snapshot from
  before that wait, whereas this statement's snapshot is taken with the lock
  held. Changed facts raise :class:`FactsChanged` and nothing is written;
* otherwise (SQLite, or moving an appointment, where the two slot rows must
  be locked in id order): the same writes as separate Core statements.

Both run in the caller's transaction and return the new appointment's id,
or None when the seat was not taken (nothing was written then).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, TextClause, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from accident_service.booking import slots
from accident_service.booking.notices import Notice, Recipient, Visit, dedupe_key
from accident_service.db import UTCDateTime, is_postgres
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    Party,
    Photo,
    PhotoStatus,
    Slot,
    Station,
    WorkStatus,
)
from accident_service.notify.outbox import enqueue

_SLOT, _STATION, _PARTY, _PHOTO = Slot.__table__, Station.__table__, Party.__table__, Photo.__table__
_APPOINTMENT, _CASE, _AUDIT = Appointment.__table__, Case.__table__, AuditEvent.__table__


@dataclass(frozen=True)
class BookingFacts:
    """What a booking shows and hashes, read before any lock is taken."""

    visit: Visit
    recipients: list[Recipient]  # ordered by role: A's notice is written first
    photo_hashes: list[tuple[int | None, str | None]]  # (item, sha256) of the accepted photos


class FactsChanged(Exception):
    """The facts loaded with the case changed before the write; nothing was written."""


# What a booking shows and hashes, for every slot the case was offered, as
# one JSON text: [[[role, openid, language], ...] ordered by role,
# [[item, sha256], ...] of the accepted photos, [[slot id, starts_at,
# ends_at, station name, address, timezone], ...]]. Correlated to
# ``accident_case``: the locked SELECT of the case loads it, and the booking
# statement computes it again and compares the text (PostgreSQL only).
# ``slot.id = ANY (ARRAY(...))`` keeps the slot lookup on the primary key
# whatever the planner guesses about the offered list.
CASE_FACTS_SQL = f"""CAST(json_build_array(
    (SELECT json_agg(json_build_array(party.role, party.openid, party.language) ORDER BY party.role)
     FROM party WHERE party.case_id = accident_case.id),
    (SELECT json_agg(json_build_array(photo.item, photo.sha256) ORDER BY photo.id)
     FROM photo WHERE photo.case_id = accident_case.id AND photo.status = '{PhotoStatus.ACCEPTED.value}'),
    (SELECT json_agg(json_build_array(slot.id, slot.starts_at, slot.ends_at, station.name, station.address,
                                      station.timezone) ORDER BY slot.id)
     FROM slot JOIN station ON station.id = slot.station_id
     WHERE slot.id = ANY (ARRAY(
         SELECT CAST(offered.id AS integer)
         FROM json_array_elements_text(CASE WHEN json_typeof(accident_case.offered_slot_ids) = 'array'
                                            THEN accident_case.offered_slot_ids END) AS offered (id))))
) AS text)"""


def facts_loaded_with(case: Case, slot_id: int) -> tuple[BookingFacts, str] | None:
    """The facts for ``slot_id`` that came with the case, and their text for the write to check; else None.

    None when the case was loaded without them (SQLite, ``session.get``) or
    ``slot_id`` is not among its offered slots.
    """
    loaded = case.booking_facts
    if loaded is None:
        return None
    parties, photos, offered = json.loads(loaded)
    slot = next((row for row in offered or () if row[0] == slot_id), None)
    if slot is None:
        return None
    _, starts_at, ends_at, name, address, timezone = slot
    recipients = [Recipient(role, openid, language) for role, openid, language in parties or ()]
    visit = Visit(name, address, timezone, datetime.fromisoformat(starts_at), datetime.fromisoformat(ends_at))
    return BookingFacts(visit, recipients, [(item, sha256) for item, sha256 in photos or ()]), loaded


@dataclass(frozen=True)
class BookingPlan:
    """Every write of one booking, decided before the seat is taken."""

    case_id: int
    slot_id: int
    moving: tuple[int, int] | None  # (appointment id, slot id) of the appointment being moved
    case_values: dict[str, Any]  # accident_case columns to set
    kind: str  # notice kind and audit action suffix: "booked" or "rescheduled"
    actor_type: str
    actor: str | None
    audit_before: dict[str, Any]
    audit_after: dict[str, Any]  # "appointment_id" is added once the row exists
    notices: Sequence[Notice]
    now: datetime
    # CASE_FACTS_SQL as loaded with the case, when the notices were rendered from it: the seat is taken
    # only if the case's facts still read the same (PostgreSQL, first booking).
    facts_as_loaded: str | None = None


def read_facts(session: Session, case_id: int, slot_id: int, *, now: datetime) -> BookingFacts | None:
    """Slot, station, parties and accepted photos in one SELECT; None for an unknown, started or full slot.

    Takes no lock: a slot's time and station do not change, and the seat's
    UPDATE checks capacity again under the row lock. A slot already full
    here needs no write at all: the booking fails as it would a moment later.
    Raises sqlalchemy errors only.
    """
    row = session.connection().execute(_facts_query(is_postgres(session)),
                                       {"case_id": case_id, "slot_id": slot_id, "now": now}).first()
    if row is None:
        return None
    starts_at, ends_at, name, address, timezone, parties, photos = row
    recipients = sorted((Recipient(role, openid, language) for role, openid, language in parties or ()),
                        key=lambda recipient: recipient.role)
    return BookingFacts(Visit(name, address, timezone, starts_at, ends_at), recipients,
                        [(item, sha256) for item, sha256 in photos or ()])


@functools.cache
def _facts_query(postgres: bool):
    aggregate, array = (func.json_agg, func.json_build_array) if postgres else (func.json_group_array, func.json_array)
    case_id = bindparam("case_id")
    parties = (select(aggregate(array(_PARTY.c.role, _PARTY.c.openid, _PARTY.c.language), type_=JSON))
               .where(_PARTY.c.case_id == case_id).scalar_subquery())
    photos = (select(aggregate(array(_PHOTO.c.item, _PHOTO.c.sha256), type_=JSON))
              .where(_PHOTO.c.case_id == case_id, _PHOTO.c.status == PhotoStatus.ACCEPTED).scalar_subquery())
    return (select(_SLOT.c.starts_at, _SLOT.c.ends_at, _STATION.c.name, _STATION.c.address, _STATION.c.timezone,
                   parties, photos)
            .join_from(_SLOT, _STATION, _STATION.c.id == _SLOT.c.station_id)
            .where(_SLOT.c.id == bindparam("slot_id"), _SLOT.c.starts_at > bindparam("now"),
                   _SLOT.c.booked < _SLOT.c.capacity))


def write_booking(session: Session, plan: BookingPlan) -> int | None:
    """Take the seat and write everything else of ``plan``; the new appointment id, or None when full.

    Raises FactsChanged (nothing written) when ``plan.facts_as_loaded`` no
    longer holds, sqlalchemy errors otherwise (an IntegrityError if the case
    somehow already has an active appointment that is not ``plan.moving``).
    """
    if plan.moving is None and is_postgres(session):
        return _write_in_one_statement(session, plan)
    if plan.facts_as_loaded is not None:
        raise ValueError("facts loaded with the case are checked by the one-statement write only")
    return _write_step_by_step(session, plan)


def _write_in_one_statement(session: Session, plan: BookingPlan) -> int | None:
    params: dict[str, Any] = {
        "slot_id": plan.slot_id, "case_id": plan.case_id, "now": plan.now,
        "appointment_status": AppointmentStatus.BOOKED.value, "case_status": plan.case_values["status"].value,
        "fingerprint": plan.case_values["evidence_fingerprint"], "offered": None,
        "actor_type": plan.actor_type, "actor": plan.actor, "action": f"appointment.{plan.kind}",
        "before": plan.audit_before, "after": plan.audit_after, "kind": plan.kind,
        "pending": WorkStatus.PENDING.value, "facts_as_loaded": plan.facts_as_loaded,
    }
    for n, notice in enumerate(plan.notices):
        params |= {f"role_{n}": notice.role, f"openid_{n}": notice.openid, f"language_{n}": notice.language,
                   f"payload_{n}": _compact_json({"text": notice.text, "template_data": notice.template_data})}
    appointment_id, facts_unchanged = session.connection().execute(_one_statement(len(plan.notices)), params).one()
    if not facts_unchanged:
        raise FactsChanged(f"case {plan.case_id}: parties, photos or station changed since the case was loaded")
    return appointment_id


def _compact_json(value: Any) -> str:
    """JSON text with Chinese as UTF-8, not \\uXXXX escapes: half the bytes to send, parse and log to WAL."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.cache
def _one_statement(notice_count: int) -> TextClause:
    """The booking as one PostgreSQL statement; every CTE after ``seat`` runs once per seat taken.

    Returns one row: the new appointment's id (NULL when no seat was taken)
    and whether the facts the notices were rendered from still hold (always
    true when ``facts_as_loaded`` is NULL: they were read after the lock).
    """
    rows = ", ".join(f"(CAST(:role_{n} AS text), CAST(:openid_{n} AS text), CAST(:language_{n} AS text), "
                     f"CAST(:payload_{n} AS json))" for n in range(notice_count))
    notices = f"""
    , notices AS (
        INSERT INTO notification (dedupe_key, case_id, openid, kind, language, payload, status, attempts,
                                  next_attempt_at, created_at)
        SELECT CAST(:kind AS text) || ':' || new_appointment.id || ':' || notice.role, CAST(:case_id AS integer),
               notice.openid, CAST(:kind AS text), notice.language, notice.payload, CAST(:pending AS text), 0,
               CAST(:now AS timestamptz), CAST(:now AS timestamptz)
        FROM new_appointment CROSS JOIN (VALUES {rows}) AS notice (role, openid, language, payload)
        ON CONFLICT (dedupe_key) DO NOTHING
    )""" if notice_count else ""
    statement = text(f"""
    WITH rendered_from AS (
        SELECT CAST(:facts_as_loaded AS text) IS NULL
               OR (SELECT {CASE_FACTS_SQL} FROM accident_case WHERE accident_case.id = :case_id)
                  = CAST(:facts_as_loaded AS text) AS current_facts
    ), seat AS (
        UPDATE slot SET booked = booked + 1
        FROM rendered_from
        WHERE slot.id = :slot_id AND booked < capacity AND starts_at > :now AND rendered_from.current_facts
        RETURNING slot.id
    ), new_appointment AS (
        INSERT INTO appointment (case_id, slot_id, status, created_at, updated_at)
        SELECT CAST(:case_id AS integer), seat.id, CAST(:appointment_status AS text), CAST(:now AS timestamptz),
               CAST(:now AS timestamptz)
        FROM seat
        RETURNING id
    ), booked_case AS (
        UPDATE accident_case
        SET status = :case_status, offered_slot_ids = CAST(:offered AS json), offered_at = NULL,
            expires_at = NULL, updated_at = :now, evidence_fingerprint = :fingerprint
        FROM new_appointment
        WHERE accident_case.id = :case_id
    ), audit AS (
        INSERT INTO audit_event (at, actor_type, actor, action, case_id, before, after)
        SELECT CAST(:now AS timestamptz), CAST(:actor_type AS text), CAST(:actor AS text), CAST(:action AS text),
               CAST(:case_id AS integer), CAST(:before AS json),
               CAST(CAST(:after AS jsonb) || jsonb_build_object('appointment_id', new_appointment.id) AS json)
        FROM new_appointment
    ){notices}
    SELECT (SELECT id FROM new_appointment) AS id, current_facts FROM rendered_from
    """)
    typed = [bindparam("now", type_=UTCDateTime()), bindparam("offered", type_=JSON),
             bindparam("before", type_=JSON), bindparam("after", type_=JSON)]
    return statement.bindparams(*typed).columns(id=Integer, current_facts=Boolean)


def _write_step_by_step(session: Session, plan: BookingPlan) -> int | None:
    if _take_seat_for(session, plan.slot_id, freeing=plan.moving[1] if plan.moving else None,
                      now=plan.now) is None:
        return None
    connection = session.connection()
    if plan.moving is not None:
        connection.execute(update(_APPOINTMENT).where(_APPOINTMENT.c.id == plan.moving[0])
                           .values(status=AppointmentStatus.RESCHEDULED, updated_at=plan.now))
    appointment_id = connection.execute(
        insert(_APPOINTMENT).values(case_id=plan.case_id, slot_id=plan.slot_id, status=AppointmentStatus.BOOKED,
                                    created_at=plan.now, updated_at=plan.now).returning(_APPOINTMENT.c.id)
    ).scalar_one()
    connection.execute(update(_CASE).where(_CASE.c.id == plan.case_id).values(**plan.case_values))
    connection.execute(insert(_AUDIT).values(at=plan.now, actor_type=plan.actor_type, actor=plan.actor,
                                             action=f"appointment.{plan.kind}", case_id=plan.case_id,
                                             before=plan.audit_before,
                                             after=plan.audit_after | {"appointment_id": appointment_id}))
    for notice in plan.notices:
        enqueue(session, openid=notice.openid, kind=plan.kind, text=notice.text,
                dedupe_key=dedupe_key(plan.kind, appointment_id, notice.role), now=plan.now, case_id=plan.case_id,
                language=notice.language, template_data=notice.template_data)
    return appointment_id


def _take_seat_for(session: Session, slot_id: int, *, freeing: int | None, now: datetime) -> slots.TakenSeat | None:
    """Take a seat in ``slot_id`` and, when moving, free one in ``freeing``.

    The two slot rows are locked in id order, so two drivers swapping slots
    in opposite directions cannot deadlock. When the old slot comes first
    its seat is freed before the new one is tried, and given back if the new
    one is full (we still hold its lock, so nobody took it meanwhile).
    """
    if freeing is None:
        return slots.take_seat(session, slot_id, now=now)
    if freeing < slot_id:
        freed = slots.free_seat(session, freeing)
        seat = slots.take_seat(session, slot_id, now=now)
        if seat is None and freed:
            slots.restore_seat(session, freeing)
        return seat
    seat = slots.take_seat(session, slot_id, now=now)
    if seat is not None:
        slots.free_seat(session, freeing)
    return seat

