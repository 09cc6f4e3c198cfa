"""Time-driven changes the scheduler runs: reminders, no-shows, idle drafts, new slots.

Each function is one unit of work over at most ``limit`` rows and returns how
many it handled. Two schedulers may run them at once: on PostgreSQL the rows
are claimed with ``FOR UPDATE ... SKIP LOCKED`` (a row another worker, or a
driver's message, holds is left for the next run); SQLite's ``BEGIN
IMMEDIATE`` serialises the whole transaction. The outbox's unique dedupe
keys make a repeated run harmless in any case.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from accident_service.booking.slots import reconcile_station_by_station, warn_of_kept_slots
from accident_service.cases import lifecycle
from accident_service.cases import service as cases
from accident_service.cases.facts import Visit, case_facts, tell
from accident_service.cases.lifecycle import Actor
from accident_service.models import Appointment, AppointmentStatus, Case, Slot
from accident_service.runtime import Runtime

log = logging.getLogger(__name__)
WAITING = (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED)  # not yet checked in


def _with_parties_and_place():
    return (selectinload(Appointment.case).selectinload(Case.parties),
            selectinload(Appointment.slot).selectinload(Slot.station))


def send_due_reminders(runtime: Runtime, *, limit: int = 100) -> int:
    """Remind both parties of appointments starting within REMINDER_MINUTES; each appointment once.

    Marks ``reminded_at`` and writes a "reminder" notice per party. Slots
    already started get no reminder, nor do appointments booked within the
    lead (booking marks them reminded). Returns the number of appointments reminded.
    """
    now = runtime.clock.now()
    horizon = now + timedelta(minutes=runtime.settings.REMINDER_MINUTES)
    with runtime.unit_of_work() as session:
        due = session.scalars(
            select(Appointment).join(Slot, Slot.id == Appointment.slot_id)
            .where(Appointment.status.in_(WAITING), Appointment.reminded_at.is_(None),
                   Slot.starts_at > now, Slot.starts_at <= horizon)
            .order_by(Slot.starts_at, Appointment.id).limit(limit)
            .with_for_update(of=Appointment, skip_locked=True)
            .options(*_with_parties_and_place())).all()
        for appointment in due:
            appointment.reminded_at = now
            facts = case_facts(appointment.case, Visit.of(appointment)) | {"by": Actor.SYSTEM.value}
            tell(session, appointment.case, [(party, facts) for party in appointment.case.parties], "reminder",
                 ref=appointment.id, now=now)
        return len(due)


def mark_no_shows(runtime: Runtime, *, limit: int = 100) -> int:
    """Close as no-show the appointments whose slot ended over NO_SHOW_GRACE_MINUTES ago without check-in.

    The lifecycle's ``no_show`` (by the system): the appointment and its case
    become ``no_show``, audited, both parties told. The seat is not freed: the
    slot is in the past. Returns the number of appointments marked.
    """
    now = runtime.clock.now()
    cutoff = now - timedelta(minutes=runtime.settings.NO_SHOW_GRACE_MINUTES)
    with runtime.unit_of_work() as session:
        overdue = session.scalars(
            select(Appointment).join(Slot, Slot.id == Appointment.slot_id)
            .join(Case, Case.id == Appointment.case_id)
            .where(Appointment.status.in_(WAITING), Slot.ends_at < cutoff)
            .order_by(Slot.ends_at, Appointment.id).limit(limit)
            # The case row too: a driver's message holding it (say, a reschedule) wins this round.
            .with_for_update(of=[Appointment, Case], skip_locked=True)
            .options(*_with_parties_and_place())).all()
        marked = 0
        for appointment in overdue:
            case = appointment.case
            refused = lifecycle.refusal(case, "no_show", actor=Actor.SYSTEM, settings=runtime.settings, now=now)
            if refused is not None:  # the case and its appointment disagree: leave it to the desk
                log.warning("appointment %s not marked no-show: %s", appointment.id, refused)
                continue
            lifecycle.apply(session, case, "no_show", actor=Actor.SYSTEM, settings=runtime.settings, now=now,
                            visit=Visit.of(appointment), before={"slot_id": appointment.slot_id})
            marked += 1
        return marked


def expire_idle_drafts(runtime: Runtime, *, limit: int = 100) -> int:
    """Close as expired the draft/ready cases whose ``expires_at`` has passed; both parties are told.

    The lifecycle's ``expire`` (by the system): the join code is released and
    any slot offer dropped. Returns the number of cases expired.
    """
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        idle = session.scalars(
            select(Case).where(Case.status.in_(cases.COLLECTING_STATUSES), Case.expires_at < now)
            .order_by(Case.expires_at, Case.id).limit(limit)
            .with_for_update(skip_locked=True)
            .options(selectinload(Case.parties), selectinload(Case.photos))).all()
        for case in idle:
            lifecycle.apply(session, case, "expire", actor=Actor.SYSTEM, settings=runtime.settings, now=now)
        return len(idle)


def generate_upcoming_slots(runtime: Runtime) -> int:
    """Create the missing slots for the next SLOT_GENERATION_DAYS local days, a station a transaction (as the CLI
    does: :func:`slots.reconcile_station_by_station`); returns how many."""
    report = reconcile_station_by_station(runtime.unit_of_work, days=runtime.settings.SLOT_GENERATION_DAYS,
                                          now=runtime.clock.now())
    warn_of_kept_slots(report)
    return report.created
