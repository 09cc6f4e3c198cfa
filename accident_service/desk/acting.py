"""One desk action from a submitted form: its fields parsed, the case locked in scope, one desk.actions call.

Each action is a name in the URL (``/desk/cases/<no>/<action>``) mapped to a
function of :mod:`accident_service.desk.actions` and a parser of the fields it
takes. Rules stay in the lifecycle: a missing reason or outcome is refused
there (RequirementMissing), not checked twice here; this only turns text into
values. Every form carries ``expected_version``, the case version the officer
saw, so a double click or an action on a case that changed meanwhile is
refused (StaleCase), never applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.booking.appointments import SlotUnavailable
from accident_service.cases.lifecycle import RETAKE_MAX_DEADLINE_MINUTES
from accident_service.desk import actions
from accident_service.desk.auth import Staff
from accident_service.errors import NotFound, ServiceError
from accident_service.models import Case, Slot
from accident_service.notify.background import notices_follow
from accident_service.runtime import Runtime
from accident_service.settings import Settings


class InvalidDeskInput(ServiceError):
    """A form field is missing or not what it should be (a version, a number)."""

    code = "invalid_input"
    http_status = 400


Parser = Callable[[Mapping[str, str], Settings], dict[str, Any]]


@dataclass(frozen=True)
class DeskAction:
    run: Callable[..., Any]
    parse: Parser


def _nothing(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    return {}


def _reason(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    return {"reason": form.get("reason", "")}


def _outcome(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    return {"liability": form.get("liability", ""), "note": form.get("note", "")}


def _retake(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    minutes = number(form, "deadline_minutes", default=settings.RETAKE_DEADLINE_MINUTES,
                     largest=RETAKE_MAX_DEADLINE_MINUTES)
    return {"item": number(form, "item"), "reason": form.get("reason", ""), "deadline": timedelta(minutes=minutes)}


def _slot(form: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    return {"slot_id": number(form, "slot_id")}


def _reschedule_here(session: Session, case: Case, *, slot_id: int, **options: Any) -> Any:
    """Move the appointment, only to a slot of the station the case is handled at."""
    station_id = session.scalar(select(Slot.station_id).where(Slot.id == slot_id))
    if station_id is None:
        raise SlotUnavailable(slot_id, "unknown", f"there is no slot {slot_id}")
    if station_id != actions.station_of(case):
        raise SlotUnavailable(slot_id, "other_station", f"slot {slot_id} is not one of this station's")
    return actions.reschedule(session, case, slot_id, **options)


ACTIONS: dict[str, DeskAction] = {
    "confirm": DeskAction(actions.confirm, _nothing),
    "check-in": DeskAction(actions.check_in, _nothing),
    "complete": DeskAction(actions.complete, _outcome),
    "no-show": DeskAction(actions.mark_no_show, _nothing),
    "retake": DeskAction(actions.request_retake, _retake),
    "reschedule": DeskAction(_reschedule_here, _slot),
    "cancel": DeskAction(actions.cancel_appointment, _reason),
    "close": DeskAction(actions.close_case, _reason),
}


def number(form: Mapping[str, str], name: str, *, default: int | None = None, largest: int | None = None) -> int:
    """The whole number in field ``name`` (``default`` when absent or blank), from 1 to ``largest`` when given.
    Raises InvalidDeskInput (``details``: the field, and ``largest`` when given)."""
    raw = (form.get(name) or "").strip()
    if not raw and default is not None:
        return default
    bounds = {"largest": largest} if largest is not None else {}
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidDeskInput(f"{name}: a whole number is needed", field=name, **bounds)
    if largest is not None and not 1 <= int(raw) <= largest:
        raise InvalidDeskInput(f"{name}: 1 to {largest}", field=name, **bounds)
    return int(raw)


def perform(runtime: Runtime, staff: Staff, case_no: str, action: str, form: Mapping[str, str]) -> None:
    """Apply ``action`` (a key of ACTIONS) to case ``case_no`` as ``staff``, in one unit of work.

    Raises NotFound (unknown action, or a case out of the staff member's
    scope), InvalidDeskInput, TransitionRefused (StaleCase when
    ``expected_version`` is not the case's version) or SlotUnavailable.
    The notices go to the outbox in the same transaction and out right after (to the people they are for).
    """
    desk_action = ACTIONS.get(action)
    if desk_action is None:
        raise NotFound(f"no desk action {action!r}")
    version = number(form, "expected_version")
    options = desk_action.parse(form, runtime.settings)
    with notices_follow(runtime), runtime.unit_of_work() as session:
        case = actions.lock_case(session, case_no, station_id=staff.station_scope)
        desk_action.run(session, case, staff=staff.username, settings=runtime.settings, now=runtime.clock.now(),
                        expected_version=version, **options)
