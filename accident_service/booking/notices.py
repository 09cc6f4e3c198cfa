"""What the two parties are told about their appointment, written to the outbox.

Every notice goes to both parties, each in their own language, in the
transaction of the change that causes it. Dedupe keys name the kind, the
row and the role (``booked:{appointment.id}:A``), so a retried job or
message never sends a notice twice. A notice is stored as its facts (case
number, fingerprint, station, time) and rendered by :func:`render` when the
dispatcher sends it: a booking has no text to prepare while it holds a seat,
and the facts stay what they were when the change was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.models import Case, Party, Station
from accident_service.notify.outbox import enqueue

KINDS = ("booked", "rescheduled", "cancelled", "confirmed", "retake", "reminder", "no_show", "expired",
         "evidence_updated")
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


def dedupe_key(kind: str, ref: int, role: str) -> str:
    """``booked:{appointment.id}:A``: one notice per kind, row and party, however often it is written."""
    return f"{kind}:{ref}:{role}"


def notify_parties(session: Session, case: Case, kind: str, *, ref: int, now: datetime,
                   visit: Visit | None = None, parties: Sequence[Party] | None = None) -> None:
    """Write the ``kind`` notice for both parties (``ref`` is the appointment or case id in the key).

    The notice is stored as its facts (:func:`notice_facts`, with the case's
    current evidence fingerprint) and rendered in each party's language when
    sent. ``parties`` defaults to ``case.parties``. Raises ValueError for an unknown kind.
    """
    facts = notice_facts(case.case_no, case.evidence_fingerprint, visit)
    for party in case.parties if parties is None else parties:
        notify_party(session, case, party, kind, ref=ref, now=now, facts=facts)


def notify_party(session: Session, case: Case, party: Party, kind: str, *, ref: int, now: datetime,
                 facts: dict[str, Any]) -> None:
    """Write one party's ``kind`` notice with ``facts`` (:func:`notice_facts` and what the kind adds).

    Raises ValueError for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    enqueue(session, openid=party.openid, kind=kind, notice=facts, dedupe_key=dedupe_key(kind, ref, party.role.value),
            now=now, case_id=case.id, language=messages.normalise_language(party.language))


def notice_facts(case_no: str, fingerprint: str | None, visit: Visit | None) -> dict[str, str | None]:
    """What a notice about a case shows, in no language: the outbox row keeps these (JSON) until it is sent.

    Times are :func:`utc_text`; the booking statement on PostgreSQL
    (booking.writes) builds the same facts in SQL.
    """
    facts: dict[str, str | None] = {"case_no": case_no, "fingerprint": fingerprint}
    if visit is not None:
        facts |= {"station": visit.station_name, "address": visit.address, "timezone": visit.timezone,
                  "starts_at": utc_text(visit.starts_at), "ends_at": utc_text(visit.ends_at)}
    return facts


def utc_text(moment: datetime) -> str:
    """An aware time as stored in facts: ISO 8601 in UTC with microseconds ("2026-11-25T06:00:00.000000+00:00")."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _stored_time(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"not a time with an offset: {value!r}")
    return moment


def render(kind: str, language: str, facts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``kind`` notice from its stored facts in ``language``: (customer-service text, template data).

    Besides :func:`notice_facts`, a retake request has ``item`` and
    ``reason``, and ``variant`` "other" where it tells the party who is not
    asked. Raises ValueError for an unknown kind, facts that are not an object
    or an unreadable time or zone, and KeyError for a fact or text the notice
    needs but lacks (the dispatcher gives such a row up as a bad payload).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    if not isinstance(facts, dict):
        raise ValueError(f"the facts of a notice are {type(facts).__name__}, not an object")
    language = messages.normalise_language(language)
    params = {"case_no": str(facts["case_no"]), "fingerprint": str(facts.get("fingerprint") or "-")}
    if facts.get("starts_at") is not None:
        if not isinstance(facts["timezone"], str):
            raise ValueError(f"not a time zone: {facts['timezone']!r}")
        visit = Visit(str(facts["station"]), str(facts["address"]), facts["timezone"],
                      _stored_time(facts["starts_at"]), _stored_time(facts["ends_at"]))
        params |= {"station": visit.station_name, "address": visit.address, "time": visit_window(visit, language)}
    params |= {name: str(facts[name]) for name in ("item", "reason") if name in facts}
    variant = f".{facts['variant']}" if facts.get("variant") else ""
    text = messages.text(f"booking.notice.{kind}{variant}", language, **params)
    return text, template_data(kind, params, language, variant=variant)


def template_data(kind: str, params: dict[str, str], language: str, *, variant: str = "") -> dict[str, Any]:
    """Fields for a template message: a title ("first"), the facts, and a remark, each {"value": str}."""
    data = {"first": messages.text(f"booking.title.{kind}", language)} | params
    data["remark"] = messages.text(f"booking.remark.{kind}{variant}", language)
    return {key: {"value": value} for key, value in data.items()}
