"""What a notice about a case says, in no language, and how it is written to the outbox.

A notice is stored as its facts (case number, evidence fingerprint, station,
address, time, who acted, and what its kind adds) in the transaction of the
change that causes it, and rendered in the recipient's language when it is
sent (``notify.notices.render``): the facts stay what they were when the
change was made. Dedupe keys name the kind, the row and the recipient's role
(``booked:{case id}.{version}:A``), so a retried job or message never writes a
notice twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.models import Appointment, Case, Party, Station
from accident_service.notice_kinds import NOTICE_KINDS
from accident_service.outbox import enqueue_many, message_row


@dataclass(frozen=True)
class Visit:
    """Where and when the parties are expected (what a notice about an appointment shows)."""

    station_name: str
    address: str
    timezone: str
    starts_at: datetime
    ends_at: datetime

    @classmethod
    def at(cls, station: Station, starts_at: datetime, ends_at: datetime) -> Visit:
        return cls(station.name, station.address, station.timezone, starts_at, ends_at)

    @classmethod
    def of(cls, appointment: Appointment) -> Visit:
        slot = appointment.slot
        return cls.at(slot.station, slot.starts_at, slot.ends_at)

    def window(self, language: str | None) -> str:
        """When, in the station's wall time and the reader's language."""
        return messages.time_window(self.starts_at, self.ends_at, self.timezone, language)


def case_facts(case: Case, visit: Visit | None = None) -> dict[str, Any]:
    """The facts every notice about ``case`` carries: its number, fingerprint and (with a visit) place and time."""
    facts: dict[str, Any] = {"case_no": case.case_no, "fingerprint": case.evidence_fingerprint}
    if visit is not None:
        facts |= {"station": visit.station_name, "address": visit.address, "timezone": visit.timezone,
                  "starts_at": utc_text(visit.starts_at), "ends_at": utc_text(visit.ends_at)}
    return facts


def utc_text(moment: datetime) -> str:
    """An aware time as stored in facts: ISO 8601 in UTC with microseconds ("2026-11-25T06:00:00.000000+00:00")."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def tell(session: Session, case: Case, readers: Iterable[tuple[Party, dict[str, Any]]], kind: str, *, ref: str | int,
         now: datetime) -> None:
    """Write the ``kind`` notice for each (party, facts) of ``readers`` to the outbox, in one statement.

    ``ref`` names the occasion in the dedupe keys (``booked:{ref}:A``): an
    appointment id, or ``"<case id>.<version>"`` for a lifecycle transition,
    so writing the same notice again is a no-op. Raises ValueError for an unknown kind.
    """
    if kind not in NOTICE_KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    enqueue_many(session, [
        message_row(openid=party.openid, kind=kind, dedupe_key=f"{kind}:{ref}:{party.role.value}", now=now,
                    case_id=case.id, language=messages.normalise_language(party.language),
                    payload={"notice": facts | {"to": party.role.value}})
        for party, facts in readers])
