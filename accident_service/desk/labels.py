"""Stored codes in the officer's words: statuses, audit entries and why a notice was not sent.

The case page shows what other features wrote in their own terms (a transition's
audit action, a status, the dispatcher's English ``last_error``). Each goes
through the catalogue here; a code the catalogue does not know yet shows as
itself, so a new one reads oddly on the page instead of breaking it.
Called from templates, in a request (the language is the officer's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from accident_service import messages
from accident_service.booking.appointments import REMINDER_DROPPED, SlotUnavailable
from accident_service.cases.lifecycle import (
    NOTE_MAX_CHARS,
    REASON_MAX_CHARS,
    NotAllowed,
    StaleCase,
    TransitionRefused,
    WrongState,
)
from accident_service.desk.i18n import current_language, local_time, t
from accident_service.leases import LEASE_EXPIRED
from accident_service.messages import catalogue
from accident_service.models import API_TOKEN_ACTOR_PREFIX
from accident_service.notify.dispatch import (
    AND_MOOT,
    BAD_PAYLOAD,
    CARRIED,
    MOOT,
    TEMPLATE_NOT_DELIVERED,
    UNCONFIRMED,
    WAITING,
)
from accident_service.retention import PURGED_UNSENT

# A value of these audit fields is a code with labels of its own.
_VALUE_LABELS = {"status": "desk.status.", "liability": "desk.liability."}
# Audit fields that already have a label on the page; the others are under desk.audit.field.
_FIELD_LABELS = {"status": "desk.queue.status", "liability": "desk.form.liability", "item": "desk.form.item",
                 "plate": "desk.case.plate", "phone": "desk.case.phone", "fingerprint": "desk.case.fingerprint"}
_ACTORS = {"staff": "desk.audit.actor.staff", "system": "desk.audit.actor.system",
           "wechat": "desk.audit.actor.wechat"}
_PARTIES = {"A": "desk.case.party_a", "B": "desk.case.party_b"}
# Audit fields holding a time (UTC, ISO 8601): shown in the station's time, as every other time on the page.
_TIMES = frozenset({"due_at", "requested_at"})


def text_or(key: str, fallback: str, /, **params: object) -> str:
    """The catalogue text ``key``, or ``fallback`` as it is when the catalogue has no such key."""
    return t(key, **params) if key in catalogue() else fallback


def status(code: str, language: str | None = None) -> str:
    """A case's or an appointment's status ("booked") as the page's badges name it, in ``language`` (None: the
    officer's); the code itself when the catalogue has no name for it."""
    key = f"desk.status.{code}"
    return messages.text(key, language or current_language()) if key in catalogue() else code


def appointment_status(code: str, language: str | None = None) -> str:
    """An appointment's status: as :func:`status` names it, but where the case's word would mislead (a cancelled
    appointment is 已取消; 已撤销 is a case the driver withdrew), the appointment's own."""
    key = f"desk.appointment_status.{code}"
    return messages.text(key, language or current_language()) if key in catalogue() else status(code, language)


def party(role: str | None) -> str:
    """A party by its role ("A") within a line: 甲方, Party A; anything else (none: "-") as it is."""
    return t(f"desk.party.{role}") if role in _PARTIES else role or "-"


def refusal_key(refused: TransitionRefused | SlotUnavailable) -> str:
    """The catalogue key of a refusal's sentence, a lifecycle's or a slot's (it may be missing: see :func:`refusal`)."""
    if isinstance(refused, SlotUnavailable):
        return f"desk.refused.slot.{refused.details['reason']}"
    if isinstance(refused, StaleCase):
        return "desk.refused.stale"
    if isinstance(refused, NotAllowed):
        return "desk.refused.not_allowed"
    if isinstance(refused, WrongState):
        return "desk.refused.wrong_state"
    return f"desk.refused.{refused.reason}"


def refusal(refused: TransitionRefused | SlotUnavailable, language: str | None = None) -> str:
    """A refusal (the lifecycle's, or a slot that cannot be taken) in a sentence, in ``language`` (None: the
    officer's): the desk's message after a refused form, the API's ``message``. A reason without a text yet gets
    "Not done: " and the refusal's own words."""
    language = language or current_language()
    key = refusal_key(refused)
    if key not in catalogue():
        return messages.text("desk.refused.other", language, detail=refused.message)
    if isinstance(refused, WrongState):  # its reason is the case's status, named inside the sentence
        return messages.text(key, language, state=status(refused.reason, language))
    return messages.text(key, language, reason_max=REASON_MAX_CHARS, note_max=NOTE_MAX_CHARS)


def audit_action(action: str) -> str:
    """An audit entry's action ("case.confirm"). A desk transition reads as its button does (desk.action.*)."""
    if f"desk.audit.action.{action}" in catalogue():
        return t(f"desk.audit.action.{action}")
    transition = action.removeprefix("case.")
    return text_or(f"desk.action.{transition}", action) if transition != action else action


def audit_actor(actor_type: str, actor: str | None) -> str:
    """Who made an audit entry: a party by its role, staff by name (an API token as such, not as an officer), the
    system."""
    if actor_type == "party" and actor in _PARTIES:
        return t(_PARTIES[actor])
    if actor_type == "staff" and actor and actor.startswith(API_TOKEN_ACTOR_PREFIX):
        return t("desk.audit.actor.token", name=actor.removeprefix(API_TOKEN_ACTOR_PREFIX))
    if actor_type in _ACTORS:
        return t(_ACTORS[actor_type], name=actor or "")
    return f"{actor_type}: {actor}" if actor else actor_type


@dataclass(frozen=True)
class Change:
    field: str
    before: str | None  # None: the entry does not say (not "-": that is a value it records as empty)
    after: str | None


def language(code: str | None) -> str:
    """A person's language ("zh") by its name in the officer's language."""
    return text_or(f"desk.language.{code}", code or "-")


def audit_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
                  zone: str = "UTC", slots: Mapping[int, str] | None = None,
                  items: Mapping[int, str] | None = None) -> tuple[Change, ...]:
    """The fields an audit entry records, each with its label and its values (before and after) in words; times in
    ``zone`` (the station's), as the rest of the page; a slot by its time as ``slots`` names it (slot id -> words,
    :func:`slot_time`), by its id when it is not there; a photo item with its name, as ``items`` gives its checklist
    code (item -> code), by its number alone when it is not there."""
    before, after = before or {}, after or {}
    fields = [*before, *(name for name in after if name not in before)]
    named = _Named(slots or {}, items or {})
    return tuple(_change(name, before, after, zone, named) for name in fields)


def slot_time(starts_at: datetime, ends_at: datetime, zone: str, station: str | None = None) -> str:
    """A slot in an audit entry: "12-08 09:00–09:30", and the station's name when it is not the page's (a supervisor
    moved the case to another station)."""
    when = f"{local_time(starts_at, zone, '%m-%d %H:%M')}–{local_time(ends_at, zone, '%H:%M')}"
    return f"{when} · {station}" if station else when


def due_time(due_at: datetime, slot_start: datetime) -> str:
    """A retake's deadline on the queue, in the slot's zone: its time, and its date too when that is not the slot's
    day (acceptance pass: "retake due 22:43" on the next day's queue)."""
    local = due_at.astimezone(slot_start.tzinfo)
    return local.strftime("%H:%M" if local.date() == slot_start.date() else "%m-%d %H:%M")


def checklist_item(code: str) -> str:
    """A photo item by its name for the desk ("Party A's plate"; the drivers' own, "your car's plate", names no
    party). Every item has one (tests/desk/test_catalogue.py), and PHOTO_CHECKLIST takes only those items."""
    return t(f"desk.checklist.{code}")


@dataclass(frozen=True)
class _Named:
    """What the page knows by name that an audit entry records by number."""
    slots: Mapping[int, str]  # slot id -> its time in words
    items: Mapping[int, str]  # photo item -> its checklist code


def photo_item(item: int, code: str | None) -> str:
    """A photo item with its name ("4. Party B's plate"), its checklist ``code`` given; by its number alone
    when the page does not know its code."""
    return t("desk.case.photo_item", item=item, name=checklist_item(code)) if code else str(item)


def _change(name: str, before: Mapping[str, Any], after: Mapping[str, Any], zone: str, named: _Named) -> Change:
    label = text_or(_FIELD_LABELS.get(name, f"desk.audit.field.{name}"), name)
    if name in before and name in after and before[name] == after[name]:
        return Change(label, None, _value(name, after[name], zone, named))  # unchanged (a photo added to a draft)
    # A value the entry had before and no longer has after (a cancelled appointment's slot: 5 → -); one it records
    # after only is what the step added (a photo's item and hash), shown alone: "- →" before each was noise.
    return Change(label, _value(name, before[name], zone, named) if name in before else None,
                  _value(name, after[name], zone, named) if name in after else ("-" if after else None))


def _value(field: str, value: Any, zone: str, named: _Named) -> str:
    if value is None or value == "":
        return "-"
    if field == "slot_id" and value in named.slots:
        return named.slots[value]
    if field == "item" and isinstance(value, int):
        return photo_item(value, named.items.get(value))
    if field in _TIMES and isinstance(value, str):  # stored in UTC, ISO 8601 (cases.facts.utc_text, isoformat)
        try:
            return local_time(datetime.fromisoformat(value), zone, "%m-%d %H:%M")
        except ValueError:
            return value
    if isinstance(value, bool):  # a flag the entry records ("replaced": a photo taken again)
        return t(f"desk.audit.{'yes' if value else 'no'}")
    family = _VALUE_LABELS.get(field)
    return text_or(f"{family}{value}", str(value)) if family else str(value)


@dataclass(frozen=True)
class NoticeReason:
    text: str  # in the officer's language
    detail: str | None  # the writer's own words, where they say more than the text (English, as written)


# How the writers word a notice's last_error, each from the writer's own constant (notify/dispatch.py,
# booking/appointments.py, retention.py, leases.py), in match order.
_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern, re.DOTALL), key) for pattern, key in (
    (re.escape(MOOT), "moot"),
    (re.escape(TEMPLATE_NOT_DELIVERED) + "(?P<detail>.*)" + re.escape(AND_MOOT), "template_moot"),
    (re.escape(TEMPLATE_NOT_DELIVERED) + "(?P<detail>.*)", "template_not_delivered"),
    (re.escape(WAITING), "waiting"),
    (re.escape(WAITING) + "; (?P<detail>.*)", "sms_refused"),
    (re.escape(CARRIED), "carried"),
    (re.escape(UNCONFIRMED), "unconfirmed"),
    (re.escape(REMINDER_DROPPED) + r"\d+ (?P<status>\w+)", "appointment_changed"),
    (re.escape(PURGED_UNSENT), "purged"),
    (re.escape(BAD_PAYLOAD) + "(?P<detail>.*)", "bad_payload"),
    (re.escape(LEASE_EXPIRED) + ".*", "lease_expired"),
))


def notice_reason(last_error: str | None) -> NoticeReason | None:
    """Why a notice is where it is, from its ``last_error``: a known reason in words, with the raw detail only
    where it adds to them (a platform's status, an SMS gateway's refusal); an unknown one as a generic label over
    the raw text."""
    if not last_error:
        return None
    for pattern, name in _REASONS:
        found = pattern.fullmatch(last_error)
        if found is not None:
            groups = found.groupdict()
            params = {"status": appointment_status(groups["status"])} if "status" in groups else {}
            return NoticeReason(t(f"desk.notice_reason.{name}", **params), groups.get("detail"))
    return NoticeReason(t("desk.notice_reason.other"), last_error)
