"""What the two parties are told about their appointment, written to the outbox.

Every notice goes to both parties, each in their own language, in the
transaction of the change that causes it. Dedupe keys name the kind, the
row and the role (``booked:{appointment.id}:A``), so a retried job or
message never sends a notice twice. :func:`render_notices` needs no
database, so a booking renders its notices before it takes the seat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.models import Case, Party, Station
from accident_service.notify.outbox import enqueue

KINDS = ("booked", "rescheduled", "cancelled", "reminder", "no_show", "expired", "evidence_updated")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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


def time_window(starts_at: datetime, ends_at: datetime, timezone: str, language: str) -> str:
    """The window in the station's wall time: "11月25日 14:00-14:30" / "25 Nov 14:00-14:30"."""
    zone = ZoneInfo(timezone)
    start, end = starts_at.astimezone(zone), ends_at.astimezone(zone)
    return messages.text("booking.when", language, month=start.month, month_name=_EN_MONTHS[start.month - 1],
                         day=start.day, start=f"{start:%H:%M}", end=f"{end:%H:%M}")


def visit_window(visit: Visit, language: str) -> str:
    return time_window(visit.starts_at, visit.ends_at, visit.timezone, language)


@dataclass(frozen=True)
class Recipient:
    """A party as a notice needs it: role (the dedupe key's last part), openid and language."""

    role: str
    openid: str
    language: str


@dataclass(frozen=True)
class Notice:
    """One rendered notice for one party, ready for the outbox."""

    role: str
    openid: str
    language: str
    text: str
    template_data: dict[str, Any]


def recipients_of(parties: Sequence[Party]) -> list[Recipient]:
    return [Recipient(party.role.value, party.openid, party.language) for party in parties]


def render_notices(kind: str, *, case_no: str, fingerprint: str | None, visit: Visit | None,
                   recipients: Sequence[Recipient]) -> list[Notice]:
    """The ``kind`` notice for each recipient in their language; no database access.

    Raises ValueError for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    rendered: list[Notice] = []
    for recipient in recipients:
        language = messages.normalise_language(recipient.language)
        params = notice_params(case_no, fingerprint, visit, language)
        rendered.append(Notice(recipient.role, recipient.openid, language,
                               messages.text(f"booking.notice.{kind}", language, **params),
                               template_data(kind, params, language)))
    return rendered


def dedupe_key(kind: str, ref: int, role: str) -> str:
    """``booked:{appointment.id}:A``: one notice per kind, row and party, however often it is written."""
    return f"{kind}:{ref}:{role}"


def notify_parties(session: Session, case: Case, kind: str, *, ref: int, now: datetime,
                   visit: Visit | None = None, parties: Sequence[Party] | None = None) -> None:
    """Write the ``kind`` notice for both parties (``ref`` is the appointment or case id in the key).

    ``parties`` defaults to ``case.parties``. Raises ValueError for an unknown kind.
    """
    rendered = render_notices(kind, case_no=case.case_no, fingerprint=case.evidence_fingerprint, visit=visit,
                              recipients=recipients_of(case.parties if parties is None else parties))
    for notice in rendered:
        enqueue(session, openid=notice.openid, kind=kind, text=notice.text,
                dedupe_key=dedupe_key(kind, ref, notice.role), now=now, case_id=case.id, language=notice.language,
                template_data=notice.template_data)


def notice_params(case_no: str, fingerprint: str | None, visit: Visit | None, language: str) -> dict[str, str]:
    params = {"case_no": case_no, "fingerprint": fingerprint or "-"}
    if visit is not None:
        params |= {"station": visit.station_name, "address": visit.address, "time": visit_window(visit, language)}
    return params


def template_data(kind: str, params: dict[str, str], language: str) -> dict[str, Any]:
    """Fields for a template message: a title ("first"), the facts, and a remark, each {"value": str}."""
    data = {"first": messages.text(f"booking.title.{kind}", language)} | params
    data["remark"] = messages.text(f"booking.remark.{kind}", language)
    return {key: {"value": value} for key, value in data.items()}
