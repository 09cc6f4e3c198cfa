"""The API's write side: one desk action on one case, answered once per Idempotency-Key.

Every change goes through ``desk/actions.py`` on the case locked by
``lock_case`` (scoped to the caller's station: another station's case is
NotFound, as on the desk). The answer is stored under the key in the same
transaction. A duplicate sent at the same moment waits for the case lock
and then finds the stored answer; the key's primary key settles the rare
race between two requests with one key on different cases. A refusal
(TransitionRefused, SlotUnavailable, SlotNotFound, NotFound) changed nothing;
it is stored as the first answer too, so a retry reads the same refusal. A
lifecycle refusal answers in a sentence (``api/refusals.py``), its reason
kept in ``details``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accident_service.api.callers import Caller
from accident_service.api.idempotency import Answer, KeyReused, remember, stored_answer
from accident_service.api.refusals import reword
from accident_service.booking.appointments import SlotUnavailable
from accident_service.cases.lifecycle import TransitionRefused
from accident_service.desk import actions
from accident_service.errors import ServiceError
from accident_service.models import Case, Slot
from accident_service.notify.background import notices_follow
from accident_service.runtime import Runtime
from accident_service.settings import Settings

#: Renders the answer's body from the case just changed (the API's schemas, so Flask-free here).
Render = Callable[[Session, Case], dict[str, Any]]


class SlotNotFound(ServiceError):
    """A reschedule names a slot that does not exist (one that exists but cannot be taken is SlotUnavailable).

    404 like an unknown case, with its own code: a well-formed request about something that is not there
    (422 is for a request that does not fit the description).
    """

    code = "slot_not_found"
    http_status = 404


@dataclass(frozen=True)
class Request:
    """One action as the API received it: its name, its parsed body, the key and what the key is bound to."""

    case_no: str
    action: str
    params: Mapping[str, Any]
    key: str
    fingerprint: str


@dataclass(frozen=True)
class _Context:
    session: Session
    case: Case
    caller: Caller
    settings: Settings
    now: datetime

    def desk(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments every desk action takes."""
        return {"staff": self.caller.name, "settings": self.settings, "now": self.now,
                "expected_version": params.get("expected_version")}


def _reschedule(ctx: _Context, params: Mapping[str, Any]) -> None:
    slot = ctx.session.get(Slot, params["slot_id"])
    if slot is None:
        # Told apart here, where the slot is loaded anyway: whether an existing slot can be taken stays booking's.
        raise SlotNotFound(f"There is no slot {params['slot_id']}: choose one from "
                           "GET /api/v1/stations/{code}/slots.", slot_id=params["slot_id"])
    if ctx.caller.station_id is not None and slot.station_id != ctx.caller.station_id:
        # The case would leave the caller's sight: officers move appointments within their station.
        raise SlotUnavailable(slot.id, "other_station", f"slot {slot.id} is not at your station")
    actions.reschedule(ctx.session, ctx.case, params["slot_id"], **ctx.desk(params))


def _request_retake(ctx: _Context, params: Mapping[str, Any]) -> None:
    minutes = params.get("deadline_minutes")
    actions.request_retake(ctx.session, ctx.case, item=params["item"], reason=params["reason"],
                           deadline=timedelta(minutes=minutes) if minutes else None, **ctx.desk(params))


ACTIONS: dict[str, Callable[[_Context, Mapping[str, Any]], Any]] = {
    "confirm": lambda ctx, p: actions.confirm(ctx.session, ctx.case, **ctx.desk(p)),
    "reschedule": _reschedule,
    "check_in": lambda ctx, p: actions.check_in(ctx.session, ctx.case, **ctx.desk(p)),
    "complete": lambda ctx, p: actions.complete(ctx.session, ctx.case, liability=p["liability"],
                                                note=p.get("note") or "", **ctx.desk(p)),
    "no_show": lambda ctx, p: actions.mark_no_show(ctx.session, ctx.case, **ctx.desk(p)),
    "cancel": lambda ctx, p: actions.cancel_appointment(ctx.session, ctx.case, reason=p["reason"], **ctx.desk(p)),
    "request_retake": _request_retake,
}


def perform(runtime: Runtime, caller: Caller, request: Request, render: Render) -> Answer:
    """Apply ``request`` once and answer it, or answer a retry of it with the first answer.

    The action's notices go out right after it, as after a desk officer's (notify.background).

    Raises KeyReused (the key answered another request), the action's
    refusal (see ``desk/actions.py``: TransitionRefused, SlotUnavailable;
    SlotNotFound) or NotFound.
    """
    now = runtime.clock.now()
    keep = timedelta(hours=runtime.settings.IDEMPOTENCY_KEY_HOURS)
    try:
        with notices_follow(runtime), runtime.unit_of_work() as session:
            answer = stored_answer(session, caller.owner, request.key, request.fingerprint, now=now)
            if answer is not None:
                return answer
            case = actions.lock_case(session, request.case_no, station_id=caller.station_id)
            # A duplicate sent at the same time held the lock until it committed: its answer is in now.
            answer = stored_answer(session, caller.owner, request.key, request.fingerprint, now=now)
            if answer is not None:
                return answer
            ACTIONS[request.action](_Context(session, case, caller, runtime.settings, now), request.params)
            session.flush()
            answer = Answer(200, render(session, case))
            remember(session, caller.owner, request.key, request.fingerprint, answer, now=now, keep=keep)
            return answer
    except KeyReused:
        raise
    except ServiceError as refused:
        if isinstance(refused, TransitionRefused | SlotUnavailable):
            reword(refused)
        _remember_refusal(runtime, caller, request, refused, now=now, keep=keep)
        raise
    except IntegrityError as clash:
        with runtime.unit_of_work() as session:
            answer = stored_answer(session, caller.owner, request.key, request.fingerprint, now=now)
        if answer is None:
            raise clash
        return answer


def _remember_refusal(runtime: Runtime, caller: Caller, request: Request, refused: ServiceError, *,
                      now: datetime, keep: timedelta) -> None:
    answer = Answer(refused.http_status, refused.to_dict())
    try:
        with runtime.unit_of_work() as session:
            remember(session, caller.owner, request.key, request.fingerprint, answer, now=now, keep=keep)
    except IntegrityError:
        pass  # a concurrent request with this key stored its answer first; that one is the first answer
