"""The database side of a booking: take the seat, write everything else, show it in the session.

Its notices are stored as facts (case number, evidence fingerprint, station
and time; see ``booking.notices``) and rendered in each party's language when
they are sent, so a booking has no text to prepare. From the seat's
conditional UPDATE to COMMIT the slot row is locked and every competing
driver waits, so that stretch holds as little as possible:

* PostgreSQL, first booking: one statement of data-modifying CTEs (seat,
  appointment, case with the fingerprint of its accepted photos, audit event,
  one notice per party), each step fed by the row of the one before, so a
  full slot writes nothing at all, and nothing is read before it. The
  statement reads the parties, photos and station itself, in a snapshot
  taken after the caller locked the case: what the notices say is current
  even when that lock was waited for;
* otherwise (SQLite, or moving an appointment, where the two slot rows must
  be locked in id order): the parties and photos are read first (afresh,
  for the same reason), then the same writes as separate Core statements.

Both run in the caller's transaction. The loaded ORM objects are then
brought in line with what was written, without a second write at flush.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, TextClause, bindparam, insert, select, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from accident_service import messages
from accident_service.booking import slots
from accident_service.booking.notices import Visit, notify_parties
from accident_service.cases import service as cases
from accident_service.db import UTCDateTime, is_postgres
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    Party,
    PhotoStatus,
    WorkStatus,
)

_APPOINTMENT, _CASE, _AUDIT = Appointment.__table__, Case.__table__, AuditEvent.__table__


def write_booking(session: Session, case: Case, slot_id: int, *, moving: Appointment | None, status: CaseStatus,
                  actor_type: str, actor: str | None, now: datetime) -> Appointment | None:
    """Book ``slot_id`` for ``case`` (moving its appointment ``moving`` there, if given) and tell both parties.

    The case becomes ``status`` with its offers cleared and its evidence
    fingerprint stored; the change is audited; the old appointment (if any) is
    ``rescheduled`` and its seat freed. Returns the new appointment, present
    and clean in the session, or None when the slot is full, started or
    unknown (nothing was written then). The caller holds the case row lock and
    has flushed its pending changes. Raises sqlalchemy errors (an
    IntegrityError if the case somehow already has another active appointment).
    """
    before = {"status": case.status.value, "slot_id": moving.slot_id if moving is not None else None}
    if moving is None and is_postgres(session):
        appointment_id = _write_in_one_statement(session, case, slot_id, status=status, before=before,
                                                 actor_type=actor_type, actor=actor, now=now)
    else:
        appointment_id = _write_step_by_step(session, case, slot_id, moving=moving, status=status,
                                             before=before, actor_type=actor_type, actor=actor, now=now)
    if appointment_id is None:
        return None
    return _show_new_appointment(session, case, moving, slot_id, appointment_id, now=now)


def _booked_case_values(status: CaseStatus, fingerprint: str, now: datetime) -> dict[str, Any]:
    """The case columns a booking sets (the one-statement write spells the same in SQL)."""
    return {"status": status, "offered_slot_ids": None, "offered_at": None,
            "expires_at": None,  # a booked case is no longer an idle draft
            "updated_at": now, "evidence_fingerprint": fingerprint}


def _write_in_one_statement(session: Session, case: Case, slot_id: int, *, status: CaseStatus,
                            before: dict[str, Any], actor_type: str, actor: str | None,
                            now: datetime) -> int | None:
    row = session.connection().execute(_ONE_STATEMENT, {
        "slot_id": slot_id, "case_id": case.id, "now": now, "case_status": status.value,
        "actor_type": actor_type, "actor": actor, "before": before,
    }).one()
    if row.id is None:
        return None
    _show_booked_case(case, status=status, fingerprint=row.fingerprint, now=now)
    return row.id


# A case's evidence fingerprint in SQL: cases.evidence_fingerprint spelled for PostgreSQL (the first 16 hex
# digits of the SHA-256 of the sorted "item:sha256" lines of the accepted photos; Python's "None" for a
# missing value; code point order, which COLLATE "C" gives for UTF-8 whatever the database's collation).
# A property test compares the two.
_PHOTO_LINE = "coalesce(CAST(photo.item AS text), 'None') || ':' || coalesce(photo.sha256, 'None')"
FINGERPRINT_SQL = f"""(
    SELECT left(encode(sha256(convert_to(coalesce(
               string_agg({_PHOTO_LINE}, E'\\n' ORDER BY {_PHOTO_LINE} COLLATE "C"), ''), 'UTF8')), 'hex'), 16)
    FROM photo WHERE photo.case_id = CAST(:case_id AS integer) AND photo.status = '{PhotoStatus.ACCEPTED.value}'
)"""


def _utc_text(column: str) -> str:
    """A timestamptz as booking.notices.utc_text writes it, whatever the session's TimeZone."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _language_sql(column: str) -> str:
    """messages.normalise_language in SQL."""
    known = ", ".join(f"'{language}'" for language in messages.LANGUAGES)
    return f"CASE WHEN {column} IN ({known}) THEN {column} ELSE '{messages.DEFAULT_LANGUAGE}' END"


def _one_statement() -> TextClause:
    """The first booking of a case as one PostgreSQL statement; every CTE after ``seat`` runs once per seat.

    Returns one row: the new appointment's id and the stored fingerprint
    (both NULL when no seat was taken). The notices' facts have the keys of
    ``booking.notices.notice_facts``.
    """
    statement = text(f"""
    WITH seat AS (
        UPDATE slot SET booked = booked + 1
        WHERE slot.id = :slot_id AND booked < capacity AND starts_at > :now
        RETURNING slot.id, slot.station_id, slot.starts_at, slot.ends_at
    ), new_appointment AS (
        INSERT INTO appointment (case_id, slot_id, status, created_at, updated_at)
        SELECT CAST(:case_id AS integer), seat.id, '{AppointmentStatus.BOOKED.value}', :now, :now
        FROM seat
        RETURNING id
    ), booked_case AS (
        UPDATE accident_case
        SET status = CAST(:case_status AS text), offered_slot_ids = NULL, offered_at = NULL, expires_at = NULL,
            updated_at = :now, evidence_fingerprint = {FINGERPRINT_SQL}
        FROM new_appointment
        WHERE accident_case.id = CAST(:case_id AS integer)
        RETURNING accident_case.case_no, accident_case.evidence_fingerprint
    ), audit AS (
        INSERT INTO audit_event (at, actor_type, actor, action, case_id, before, after)
        SELECT :now, CAST(:actor_type AS text), CAST(:actor AS text), 'appointment.booked',
               CAST(:case_id AS integer), :before,
               json_build_object('status', CAST(:case_status AS text), 'slot_id', seat.id,
                                 'appointment_id', new_appointment.id)
        FROM seat CROSS JOIN new_appointment
    ), notices AS (
        INSERT INTO notification (dedupe_key, case_id, openid, kind, language, payload, status, attempts,
                                  next_attempt_at, created_at)
        SELECT 'booked:' || new_appointment.id || ':' || party.role, CAST(:case_id AS integer), party.openid,
               'booked', {_language_sql('party.language')},
               json_build_object('notice', json_build_object(
                   'case_no', booked_case.case_no, 'fingerprint', booked_case.evidence_fingerprint,
                   'station', station.name, 'address', station.address, 'timezone', station.timezone,
                   'starts_at', {_utc_text('seat.starts_at')}, 'ends_at', {_utc_text('seat.ends_at')})),
               '{WorkStatus.PENDING.value}', 0, :now, :now
        FROM seat
        JOIN station ON station.id = seat.station_id
        CROSS JOIN new_appointment CROSS JOIN booked_case
        JOIN party ON party.case_id = CAST(:case_id AS integer)
        ORDER BY party.role
        ON CONFLICT (dedupe_key) DO NOTHING
    )
    SELECT (SELECT id FROM new_appointment) AS id, (SELECT evidence_fingerprint FROM booked_case) AS fingerprint
    """)
    return (statement.bindparams(bindparam("now", type_=UTCDateTime()), bindparam("before", type_=JSON))
            .columns(id=Integer, fingerprint=String))


_ONE_STATEMENT = _one_statement()


def _write_step_by_step(session: Session, case: Case, slot_id: int, *, moving: Appointment | None,
                        status: CaseStatus, before: dict[str, Any], actor_type: str, actor: str | None,
                        now: datetime) -> int | None:
    # Read before the slot row is locked, and afresh: rows the caller's SELECT joined to the locked case come
    # from its snapshot, taken before any wait for that lock.
    parties = session.scalars(select(Party).where(Party.case_id == case.id).order_by(Party.role)
                              .execution_options(populate_existing=True)).all()
    fingerprint = cases.evidence_fingerprint(case)
    seat = _take_seat_for(session, slot_id, freeing=moving.slot_id if moving is not None else None, now=now)
    if seat is None:
        return None
    kind = "rescheduled" if moving is not None else "booked"
    connection = session.connection()
    if moving is not None:
        connection.execute(update(_APPOINTMENT).where(_APPOINTMENT.c.id == moving.id)
                           .values(status=AppointmentStatus.RESCHEDULED, updated_at=now))
    appointment_id = connection.execute(
        insert(_APPOINTMENT).values(case_id=case.id, slot_id=slot_id, status=AppointmentStatus.BOOKED,
                                    created_at=now, updated_at=now).returning(_APPOINTMENT.c.id)
    ).scalar_one()
    connection.execute(update(_CASE).where(_CASE.c.id == case.id)
                       .values(**_booked_case_values(status, fingerprint, now)))
    connection.execute(insert(_AUDIT).values(at=now, actor_type=actor_type, actor=actor,
                                             action=f"appointment.{kind}", case_id=case.id, before=before,
                                             after={"status": status.value, "slot_id": slot_id,
                                                    "appointment_id": appointment_id}))
    _show_booked_case(case, status=status, fingerprint=fingerprint, now=now)  # the notices show the new fingerprint
    visit = Visit(seat.station_name, seat.station_address, seat.station_timezone, seat.starts_at, seat.ends_at)
    notify_parties(session, case, kind, ref=appointment_id, now=now, visit=visit, parties=parties)
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


def _show_booked_case(case: Case, *, status: CaseStatus, fingerprint: str, now: datetime) -> None:
    """The loaded case shows the booked state as committed: written already, nothing to flush."""
    for key, value in _booked_case_values(status, fingerprint, now).items():
        set_committed_value(case, key, value)


def _show_new_appointment(session: Session, case: Case, moving: Appointment | None, slot_id: int,
                          appointment_id: int, *, now: datetime) -> Appointment:
    """The new appointment row as a clean object in the session (and in ``case.appointments`` if loaded)."""
    slots.forget_booked_count(session, slot_id)
    if moving is not None:
        set_committed_value(moving, "status", AppointmentStatus.RESCHEDULED)
        set_committed_value(moving, "updated_at", now)
    appointment = Appointment(id=appointment_id, case_id=case.id, slot_id=slot_id, status=AppointmentStatus.BOOKED,
                              created_at=now, updated_at=now, reminded_at=None)
    make_transient_to_detached(appointment)
    session.add(appointment)  # persistent and clean: the row exists
    set_committed_value(appointment, "case", case)
    if "appointments" not in sa_inspect(case).unloaded:
        set_committed_value(case, "appointments", [*case.appointments, appointment])
    return appointment
