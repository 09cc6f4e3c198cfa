"""What a notice about a case reads like, rendered from its stored facts when it is sent.

The facts (``cases.facts``) are written with the change that causes the
notice; the dispatcher renders them here, in the recipient's language as it
is then, in the three shapes a channel may need: a customer-service text, a
template card and SMS parameters. The wording is chosen from the catalogue
(``catalogue/notices.yaml``) by kind and variant: ``notice.<kind>.<variant>``
where the catalogue has it (the reader acted: "self", the other driver did:
"other", the desk did: "desk", or a kind's own variants such as the retake
request's "taker"), else ``notice.<kind>``.

Every notice template has the same five keywords (README, "Notices"):
``character_string1`` the case number, ``thing2`` what happened (``template.<kind>``:
"预约成功，可撤离现场" carries "you may leave the scene"), ``thing3`` the desk,
``time4`` the visit's time, ``thing5`` what to do or a note; each value at
most 20 characters on one line, and no first or remark line (the platform no
longer shows them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from accident_service import messages
from accident_service.cases import lifecycle
from accident_service.cases.facts import NOTICE_KINDS, Visit
from accident_service.clock import HOME_TIMEZONE
from accident_service.notify.channels import Rendered


def evidence_number(fingerprint: str | None) -> str:
    """The fingerprint as drivers read it: its first 8 hex digits, upper case, in two groups ("3F2A-9C01")."""
    if not fingerprint:
        return "-"
    short = fingerprint[:8].upper()
    return f"{short[:4]}-{short[4:]}"


def render(kind: str, language: str, facts: dict[str, Any], *, at: datetime) -> Rendered:
    """The ``kind`` notice from its stored facts in ``language``, as a text, a template card and SMS parameters.

    ``at`` is when the notice was written (a card shows it when there is no visit time).
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
    text = messages.text(_variant_key(f"notice.{kind}", variant), language, **params)
    when = _short_time(facts, at)
    headline = messages.text(_variant_key(f"template.{kind}", variant), language, **params)
    note = messages.text(_variant_key(f"template.note.{kind}", variant), language, **params)
    card = {"character_string1": params["case_no"], "thing2": headline, "thing3": params.get("station", "-"),
            "time4": when, "thing5": note}
    return Rendered(text=text, template_data={key: {"value": fit(value)} for key, value in card.items()},
                    sms_params=sms_params(kind, facts, at))


#: A template keyword value may hold at most 20 characters (since 2023-05-04, WECHAT.md §5).
KEYWORD_CHARACTERS = 20
#: The strictest SMS account's limit per template parameter (Tencent: 6 for accounts opened since
#: 2024-01-25). Our parameters are short by design, so every account takes them and none is cut.
SMS_PARAM_CHARACTERS = 6
#: Notices whose SMS time is when the notice was written (the case ended then), not the visit's.
_TOLD_AT_WRITING = lifecycle.CLOSING_NOTICES


def sms_params(kind: str, facts: dict[str, Any], at: datetime) -> tuple[str, str, str]:
    """An SMS template's three parameters: {1} the case, {2} the date, {3} the time ("7KQ2M", "12月3日", "14:00").

    {1} is the case number's random part (the full number does not fit); the
    moment is a retake's deadline, the visit's start, or (for a case that
    ended, or a notice without a visit) when the notice was written; shown
    in the station's zone. Each is at most :data:`SMS_PARAM_CHARACTERS`.
    """
    case_no = str(facts["case_no"])
    case_ref = (case_no.rsplit("-", 1)[-1] or case_no)[-SMS_PARAM_CHARACTERS:]
    if facts.get("due_at"):
        moment = _stored_time(facts["due_at"])
    elif facts.get("starts_at") and kind not in _TOLD_AT_WRITING:
        moment = _stored_time(facts["starts_at"])
    else:
        moment = at
    local = moment.astimezone(ZoneInfo(str(facts.get("timezone") or HOME_TIMEZONE)))
    return case_ref, f"{local.month}月{local.day}日", f"{local:%H:%M}"


def fit(value: str, limit: int = KEYWORD_CHARACTERS) -> str:
    """``value`` on one line within ``limit`` characters (cut with "…"): the platform refuses longer ones."""
    one_line = " ".join(str(value).split())
    return one_line if len(one_line) <= limit else one_line[:limit - 1] + "…"


def _variant_key(base: str, variant: str) -> str:
    return f"{base}.{variant}" if variant and f"{base}.{variant}" in messages.catalogue() else base


def _short_time(facts: dict[str, Any], at: datetime) -> str:
    """The visit's start (else the notice's time) as a template's time keyword shows it: "2026-11-25 14:00"."""
    moment = _stored_time(facts["starts_at"]) if facts.get("starts_at") else at
    zone = ZoneInfo(str(facts.get("timezone") or HOME_TIMEZONE))
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M}"


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
        zone = ZoneInfo(str(facts.get("timezone") or HOME_TIMEZONE))
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
