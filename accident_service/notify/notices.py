"""What a notice about a case reads like, rendered from its stored facts when it is sent.

The facts (``cases.facts``) are written with the change that causes the
notice; the dispatcher renders them here, in the recipient's language as it
is then. The wording is chosen from the catalogue (``catalogue/notices.yaml``)
by kind and variant: ``notice.<kind>.<variant>`` where the catalogue has it
(the reader acted: "self", the other driver did: "other", the desk did:
"desk", or a kind's own variants such as the retake request's "taker"), else
``notice.<kind>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from accident_service import messages
from accident_service.cases.facts import NOTICE_KINDS, Visit


def evidence_number(fingerprint: str | None) -> str:
    """The fingerprint as drivers read it: its first 8 hex digits, upper case, in two groups ("3F2A-9C01")."""
    if not fingerprint:
        return "-"
    short = fingerprint[:8].upper()
    return f"{short[:4]}-{short[4:]}"


def render(kind: str, language: str, facts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``kind`` notice from its stored facts in ``language``: (customer-service text, template data).

    Raises ValueError for an unknown kind, facts that are not an object or an
    unreadable time or zone, and KeyError for a fact or text the notice needs
    but lacks (the dispatcher gives such a row up as a bad payload).
    """
    if kind not in NOTICE_KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    if not isinstance(facts, dict):
        raise ValueError(f"the facts of a notice are {type(facts).__name__}, not an object")
    language = messages.normalise_language(language)
    params = _params(facts, language)
    variant = str(facts.get("variant") or "")
    key = f"notice.{kind}.{variant}" if variant and f"notice.{kind}.{variant}" in messages.catalogue() \
        else f"notice.{kind}"
    text = messages.text(key, language, **params)
    return text, template_data(kind, params, language, variant=variant)


def _params(facts: dict[str, Any], language: str) -> dict[str, str]:
    fingerprint = facts.get("fingerprint")
    params = {"case_no": str(facts["case_no"]), "fingerprint": str(fingerprint or "-"),
              "evidence_no": evidence_number(fingerprint)}
    if facts.get("starts_at") is not None:
        if not isinstance(facts["timezone"], str):
            raise ValueError(f"not a time zone: {facts['timezone']!r}")
        visit = Visit(str(facts["station"]), str(facts["address"]), facts["timezone"],
                      _stored_time(facts["starts_at"]), _stored_time(facts["ends_at"]))
        params |= {"station": visit.station_name, "address": visit.address, "time": visit.window(language)}
    if "item" in facts:
        params["item"] = str(facts["item"])
        code = str(facts.get("item_code") or "extra")
        params["item_name"] = messages.text(f"checklist.{code}", language) \
            if f"checklist.{code}" in messages.catalogue() else code
    if facts.get("due_at"):
        zone = ZoneInfo(str(facts.get("timezone") or "Asia/Shanghai"))
        params["due"] = f"{_stored_time(facts['due_at']).astimezone(zone):%H:%M}"
    if "liability" in facts:
        liability = str(facts["liability"])  # "A", "B", "shared" or "none": told as "you" or "the other driver"
        reading = ("self" if liability == facts.get("to") else "other") if liability in ("A", "B") else liability
        params["liability"] = messages.text(f"liability.{reading}", language)
        params["note"] = str(facts.get("note") or "-")
    params["reason"] = str(facts.get("reason") or "-")
    return params


def _stored_time(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"not a time with an offset: {value!r}")
    return moment


def template_data(kind: str, params: dict[str, str], language: str, *, variant: str = "") -> dict[str, Any]:
    """Fields for a template message: a title ("first"), the facts, and a remark, each {"value": str}."""
    remark = f"notice.remark.{kind}.{variant}" if variant and f"notice.remark.{kind}.{variant}" in \
        messages.catalogue() else f"notice.remark.{kind}"
    data = {"first": messages.text(f"notice.title.{kind}", language)} | params
    data["remark"] = messages.text(remark, language) if remark in messages.catalogue() else ""
    return {key: {"value": value} for key, value in data.items()}
