"""What the two parties are told about their appointment, written to the outbox.

Every notice goes to both parties, each in their own language, in the
transaction of the change that causes it. Dedupe keys name the kind, the
row and the role (``booked:{appointment.id}:A``), so a retried job or
message never sends a notice twice.
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

KINDS = ("booked", "rescheduled", "cancelled", "reminder", "no_show", "expired")
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


def notify_parties(session: Session, case: Case, kind: str, *, ref: int, now: datetime,
                   visit: Visit | None = None, parties: Sequence[Party] | None = None) -> None:
    """Write the ``kind`` notice for both parties (``ref`` is the appointment or case id in the key).

    ``parties`` defaults to ``case.parties``. Raises ValueError for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    for party in case.parties if parties is None else parties:
        language = messages.normalise_language(party.language)
        params = notice_params(case, visit, language)
        enqueue(session, openid=party.openid, kind=kind, text=messages.text(f"booking.notice.{kind}", language,
                                                                           **params),
                dedupe_key=f"{kind}:{ref}:{party.role.value}", now=now, case_id=case.id, language=language,
                template_data=template_data(kind, params, language))


def notice_params(case: Case, visit: Visit | None, language: str) -> dict[str, str]:
    params = {"case_no": case.case_no, "fingerprint": case.evidence_fingerprint or "-"}
    if visit is not None:
        params |= {"station": visit.station_name, "address": visit.address, "time": visit_window(visit, language)}
    return params


def template_data(kind: str, params: dict[str, str], language: str) -> dict[str, Any]:
    """Fields for a template message: a title ("first"), the facts, and a remark, each {"value": str}."""
    data = {"first": messages.text(f"booking.title.{kind}", language)} | params
    data["remark"] = messages.text(f"booking.remark.{kind}", language)
    return {key: {"value": value} for key, value in data.items()}
