"""The conversation of DESIGN.md §5: what a driver's message does to their case.

One :class:`Conversation` handles one inbound message inside one unit of
work: it changes the case (every change through ``cases.lifecycle``) and
writes at most one reply for the sender to the outbox — the reason and the
next step together — and both commit with the inbox row marked done (exactly
one effect). What the change means for the other driver goes to them as the
lifecycle's notice. Network work (downloading a photo) happens before, in
``processing.py``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.booking import appointments, availability, offers
from accident_service.cases import lifecycle, parties
from accident_service.cases import service as cases
from accident_service.cases.lifecycle import Actor, TransitionRefused, active_appointment
from accident_service.cases.parties import JOIN_SCENE_PREFIX
from accident_service.db import run_prebuilt
from accident_service.models import Case, CaseStatus, InboundMessage, Notification, Party, PartyRole
from accident_service.notify import allowance, dispatch
from accident_service.outbox import JOIN_QR_PLACEHOLDER, REPLY_KIND, enqueue
from accident_service.photos.intake import PhotoForClosedCase, discard
from accident_service.runtime import Runtime
from accident_service.wechat import preferences
from accident_service.wechat.guidance import item_name, next_step
from accident_service.wechat.inbox import PHOTO_TYPES
from accident_service.wechat.parsing import Intent, IntentKind, classify

REPORT_KEYS = {"REPORT_ACCIDENT"}
STATUS_KEYS = {"MY_CASE"}
CONFIRM_WITHIN = timedelta(minutes=10)
#: How long after their case closed "status" still shows a driver how it ended.
CLOSED_CASE_SHOWN_FOR = timedelta(days=7)
#: Messages the service cannot read (no speech recognition here): the driver is told to type or photograph instead.
SPOKEN_OR_FILMED = frozenset({"voice", "video", "shortvideo"})
#: Whether anything was written to a person about a case; built once, as every photo asks it.
_ANY_MESSAGE_IN_CASE = select(Notification.id).where(
    Notification.case_id == bindparam("case_id"), Notification.openid == bindparam("openid")).limit(1)


class Conversation:
    def __init__(self, session: Session, runtime: Runtime, message, row: InboundMessage, now: datetime) -> None:
        self.session = session
        self.runtime = runtime
        self.settings = runtime.settings
        self.message = message
        self.row = row
        self.now = now
        self.openid = str(message.source)
        self.lines: list[str] = []
        self.with_join_qr = False
        self.intent = classify(str(message.content or "")) if getattr(message, "type", "") == "text" else None
        found = cases.open_case_for(session, self.openid, for_update=True)
        self.case: Case | None = found[0] if found else None
        self.party: Party | None = found[1] if found else None
        self.language = preferences.language_for(session, self.openid, self.party)

    # -- the one reply ------------------------------------------------------

    def say(self, key: str, **params: object) -> None:
        self.lines.append(messages.text(key, self.language, **params))

    def say_text(self, text: str) -> None:
        if text:
            self.lines.append(text)

    def _send_reply(self) -> None:
        if not self.lines:
            return
        enqueue(self.session, openid=self.openid, kind=REPLY_KIND, text="\n".join(self.lines),
                dedupe_key=f"reply:{self.row.id}", now=self.now, case_id=self.case.id if self.case else None,
                language=self.language, join_qr=self.with_join_qr)

    @property
    def actor(self) -> Actor:
        assert self.party is not None
        return Actor.of(self.party)

    # -- dispatch -----------------------------------------------------------

    def run(self, prepared_photo=None, *, told_saving: bool = False) -> None:
        self.told_saving = told_saving
        if self.party is not None and allowance.action_of(self.message) is not None \
                and not (self.intent and self.intent.kind is IntentKind.CONFIRM):
            # A confirmation must be the driver's next message or action; what the platform pushes on its own
            # (a template's result, a location report) is neither.
            self.party.pending_action = self.party.pending_action_until = None
        kind = self.message.type
        if kind == "text":
            self.on_text()
        elif kind in PHOTO_TYPES:
            self.on_photo(prepared_photo)
        elif kind == "location":
            point = _coordinates(self.message)
            if point is None:
                self.say("conv.location_invalid")
            else:
                self.on_location(*point, str(self.message.label or ""))
        elif kind == "event":
            self.on_event(self.message.event)
        elif kind in SPOKEN_OR_FILMED:
            self.not_understood("conv.voice_or_video")
        else:  # a link: mid-case, what is expected now
            self.not_understood()
        self._send_reply()

    def on_event(self, event: str) -> None:
        if event == "click":
            key = str(self.message.key or "")
            if key in REPORT_KEYS:
                self.start()
            elif key in STATUS_KEYS:
                self.status()
            else:
                self.say("conv.help")
        elif event in ("scan", "subscribe_scan"):
            scene = str(getattr(self.message, "scene_id", "") or "")
            if scene.startswith(JOIN_SCENE_PREFIX):
                self.join(scene[len(JOIN_SCENE_PREFIX):], by_qr=True)
            elif event == "subscribe_scan":
                self.say("conv.help")
        elif event == "subscribe":
            self._help_or_case()
        # unsubscribe, location reports, template results: nothing to say

    def on_text(self) -> None:
        intent: Intent = self.intent or classify("")
        value = intent.value
        handlers = {
            IntentKind.REPORT: self.start,
            IntentKind.STATUS: self.status,
            IntentKind.HELP: lambda: self.say("conv.help"),
            IntentKind.LANGUAGE: lambda: self.set_language(str(value)),
            IntentKind.JOIN_CODE: lambda: self.join(str(value)),
            IntentKind.PLATE: lambda: self.set_details(plate=str(value)),
            IntentKind.PHONE: lambda: self.set_details(phone=str(value)),
            IntentKind.DETAILS: lambda: self.set_details(plate=value[0], phone=value[1]),  # type: ignore[index]
            IntentKind.DETAILS_IN_PART: lambda: self.set_details(plate=value[0], phone=value[1],  # type: ignore[index]
                                                                 unreadable=True),
            IntentKind.BAD_PLATE: lambda: self.say("conv.plate_format"),
            IntentKind.BAD_PHONE: lambda: self.say("conv.phone_format"),
            IntentKind.CHOICE: lambda: self.choose(int(value)),  # type: ignore[arg-type]
            IntentKind.RETAKE: lambda: self.retake(value),  # type: ignore[arg-type]
            IntentKind.RESCHEDULE: self.ask_for_slots,
            IntentKind.CANCEL: self.cancel,
            IntentKind.WITHDRAW: self.withdraw,
            IntentKind.CONFIRM: lambda: self.confirm(value),  # type: ignore[arg-type]
        }
        handlers.get(intent.kind, self.not_understood)()

    def not_understood(self, why: str = "conv.not_understood") -> None:
        """Mid-case, say what is expected now rather than the general help; ``why``: the line that goes first
        (without a case, before the help only when it is not the generic one)."""
        step = self._what_now()
        if step:
            self.say(why)
            self.say_text(step)
        else:
            if why != "conv.not_understood":
                self.say(why)
            self.say("conv.help")

    def _what_now(self) -> str:
        """One line on what the sender is to do now in their case ("" without a case, or a closed one)."""
        case, party = self.case, self.party
        if case is None or party is None:
            return ""
        if case.status is CaseStatus.RETAKE_REQUESTED and party.retake_item:
            return messages.text("conv.retake_ask", self.language, n=party.retake_item,
                                 item=item_name(self.settings, party.retake_item, self.language))
        if case.status in cases.COLLECTING_STATUSES:
            step = next_step(case, party, self.settings, self.language)[0]
            return step or messages.text("conv.ready_hint", self.language)
        return offers.appointment_summary(case, self.language) or ""

    # -- starting and joining -------------------------------------------------

    def start(self) -> None:
        case, party, created = parties.start_case(self.session, openid=self.openid, language=self.language,
                                                  settings=self.settings, now=self.now)
        self.case, self.party = case, party
        if created:
            self._greet_new_case()
        elif case.status in cases.COLLECTING_STATUSES:
            self.say("conv.case_resumed", case_no=case.case_no)
        else:  # already booked: say where things stand rather than start over
            self.status()
            return
        self.next_step()

    def _greet_new_case(self) -> None:
        """The case number and the invitation for the other driver (the dispatcher adds the QR link)."""
        assert self.case is not None
        self.say("conv.case_started", case_no=self.case.case_no)
        self.say("conv.join_invite", join_code=self.case.join_code, qr_url=JOIN_QR_PLACEHOLDER)
        self.with_join_qr = True

    def join(self, code: str, *, by_qr: bool = False) -> None:
        try:
            joined = parties.join_case(self.session, code=code, openid=self.openid, language=self.language,
                                       settings=self.settings, now=self.now, typed=not by_qr,
                                       asked_at=self.row.received_at)
        except parties.JoinRefused as refused:
            # A scanned code was never typed: do not ask to check and resend it.
            reason = "unknown_qr" if by_qr and refused.code == "unknown_code" else refused.code
            if reason == "in_other_case":
                how = "conv.leave_case.reporter" if refused.role is PartyRole.A else "conv.leave_case.other"
                self.say("conv.join_refused.in_other_case", case_no=refused.case_no)
                self.say(how, case_no=refused.case_no)
            else:
                self.say(f"conv.join_refused.{reason}")
            return
        self.case, self.party = joined.case, joined.party
        if joined.closed_draft:
            self.say("conv.draft_closed", case_no=joined.closed_draft)
        self.say("conv.joined", case_no=joined.case.case_no)
        self.next_step()

    # -- evidence and details ---------------------------------------------------

    def on_photo(self, prepared) -> None:
        if isinstance(prepared, PhotoForClosedCase) or (
                prepared.case_no is not None and (self.case is None or self.case.case_no != prepared.case_no)):
            # sent for a case that has closed since (checked again here: it may have closed while the photo was
            # being stored), not for a case opened since nor a new one
            closed = prepared if isinstance(prepared, PhotoForClosedCase) else lifecycle.closed_after(
                self.session, self.openid, self.row.received_at, open_case=self.case)
            if closed is not None:
                if not isinstance(prepared, PhotoForClosedCase):
                    discard(self.session, self.runtime, prepared)
                self.say("conv.photo_case_closed", case_no=closed.case_no)
                return
        if self.case is None or self.party is None:
            self.start()
        elif not self._replied_in_case():
            self._greet_new_case()  # the case was opened by this photo (before the download)
        assert self.case is not None and self.party is not None
        from accident_service.photos.intake import record_photo

        outcome = record_photo(self.session, self.runtime, case=self.case, party=self.party, prepared=prepared,
                               inbound_id=self.row.id, now=self.now)
        if outcome.retakes_done:
            return  # the new evidence number, told to both drivers, is the reply
        if self.told_saving:
            self.say("conv.photo_saved_late")
        if not outcome.accepted:
            self.say(f"photos.reject.{outcome.code}", **outcome.params)
            if outcome.code != "evidence_locked":
                self.next_step()  # with the photos done, the location or details still to come (a driver's pass)
            return
        if "capture_time_old" in outcome.warnings:
            self.say("conv.photo_warning_old")
        if outcome.replaced:
            self.say("conv.photo_replaced", n=outcome.item)
        elif outcome.extra:
            self.say("conv.photo_extra")
        else:
            # Named by its item, as it was asked for ("请拍照片4"), with the count of the sender's own: B's one photo
            # read "1/1" after "photo 4" was asked (a driver's pass).
            self.say("conv.photo_received", n=outcome.item, received=outcome.received, total=outcome.required)
        if self.case.status is CaseStatus.RETAKE_REQUESTED:
            self.say("conv.retake_received_waiting")
        self.next_step()

    def _replied_in_case(self) -> bool:
        assert self.case is not None
        params = {"case_id": self.case.id, "openid": self.openid}
        return run_prebuilt(self.session, _ANY_MESSAGE_IN_CASE, params).first() is not None

    def on_location(self, lat: float, lng: float, label: str) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if self._refused("set_location", then_what_now=True):
            return
        parties.set_location(self.session, self.case, self.party, lat=lat, lng=lng, label=label,
                             settings=self.settings, now=self.now)
        self.say("conv.location_saved", label=label or f"{lat:.5f}, {lng:.5f}")
        far = availability.nearest_desk_if_far(self.session, lat=lat, lng=lng)
        if far is not None:
            self.say("conv.location_far", station=far[0].name, km=f"{far[1]:.0f}")
        self.next_step()

    def set_details(self, *, plate: str | None = None, phone: str | None = None, unreadable: bool = False) -> None:
        """Record the sender's own plate and/or phone; ``unreadable``: the one not given was sent but could not be
        read, and its format is asked for (the other one is kept)."""
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if self._refused("set_detail", then_what_now=True):
            return
        for name, value in (("plate", plate), ("phone", phone)):
            if value is not None and not self._refused("set_detail", details={name: value}):
                parties.set_party_detail(self.session, self.case, self.party, field=name, value=value,
                                         settings=self.settings, now=self.now)
                self.say(f"conv.{name}_saved", **{name: value})
        if unreadable:  # what to send again, as for either alone (the next step asks for it anyway)
            self.say("conv.plate_format" if plate is None else "conv.phone_format")
            return
        self.next_step()

    def retake(self, item: int | None) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if self.case.status is CaseStatus.RETAKE_REQUESTED and self.party.retake_item:
            asked = self.party.retake_item  # the one the desk asked for, whatever number was sent
            self.say("conv.retake_ask", n=asked, item=item_name(self.settings, asked, self.language))
            return
        if self.case.status not in cases.COLLECTING_STATUSES or lifecycle.is_sealed(self.case):
            self.say("photos.reject.evidence_locked")
            return
        own = cases.items_of(self.settings, self.party.role)
        refused = lifecycle.refusal(self.case, "choose_retake", actor=self.actor, party=self.party,
                                    settings=self.settings, now=self.now, details={"item": item})
        if refused is not None:
            key = "conv.retake_not_own" if refused.reason == "not_own_item" else "conv.retake_which"
            self.say(key, n=item, own="、".join(map(str, own)) if self.language == "zh" else ", ".join(map(str, own)))
            return
        assert item is not None
        self.party.retake_item = item
        self.say("conv.retake_ask", n=item, item=item_name(self.settings, item, self.language))

    def set_language(self, language: str) -> None:
        self.language = messages.normalise_language(language)
        if self.party is not None:
            self.party.language = self.language
        preferences.remember_language(self.session, self.openid, self.language, self.now)
        self.say("conv.language_set")
        # And what now, in the new language: the switch alone left a driver mid-case without a step (a driver's pass).
        self.say_text(self._what_now() or messages.text("conv.help", self.language))

    def _help_or_case(self) -> None:
        """Following (again) while in an open case: that case and what to do in it (a driver's pass got the general
        help, as if there were none); else the help."""
        what_now = self._what_now()
        if self.case is not None and what_now:
            self.say("conv.case_resumed", case_no=self.case.case_no)
            self.say_text(what_now)
        else:
            self.say("conv.help")

    # -- booking --------------------------------------------------------------

    def choose(self, number: int) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if not self.party.offered_slot_ids:
            self.say("conv.choice_without_offer")
            return
        try:
            result = offers.book_choice(self.session, self.runtime, self.case, self.party, number, now=self.now)
        except TransitionRefused:
            self.say("booking.not_bookable")
            return
        if not result.booked:  # the booking notice is the reply when booked
            self._offer(result.reason_key or offers.STALE_OFFER)

    def ask_for_slots(self) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
        elif self.case.status is CaseStatus.DRAFT:
            self.say("conv.not_ready_yet")
            self.next_step()
        elif self.case.status is CaseStatus.READY:
            self._offer("booking.offer_intro")
        else:
            self._offer("booking.reschedule_offer")

    def _offer(self, intro_key: str) -> None:
        assert self.case is not None and self.party is not None
        self.say_text(offers.offer_text(self.session, self.runtime, self.case, self.party, intro_key=intro_key,
                                        now=self.now))

    def cancel(self) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if active_appointment(self.case) is None:
            self.say("conv.nothing_to_cancel.reporter" if self.party.role is PartyRole.A
                     else "conv.nothing_to_cancel.other")
            return
        if self._refused("cancel_appointment", quiet_reasons=("needs_confirmation",), then_what_now=True):
            return
        self._ask_to_confirm("cancel_appointment")
        self.say("conv.confirm_cancel", summary=offers.appointment_summary(self.case, self.language) or "")

    def withdraw(self) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if self._refused("withdraw", quiet_reasons=("needs_confirmation",), then_what_now=True):
            return
        self._ask_to_confirm("withdraw")
        self.say("conv.confirm_withdraw", case_no=self.case.case_no)

    def _ask_to_confirm(self, action: str) -> None:
        assert self.party is not None
        self.party.pending_action, self.party.pending_action_until = action, self.now + CONFIRM_WITHIN

    def confirm(self, what: str | None) -> None:
        party = self.party
        pending = party.pending_action if party is not None and party.pending_action_until \
            and party.pending_action_until >= self.now else None
        if party is not None:
            party.pending_action = party.pending_action_until = None
        wanted = {"cancel": "cancel_appointment", "withdraw": "withdraw"}.get(what or "", pending)
        if self.case is None or party is None or pending is None or pending != wanted:
            self.say("conv.nothing_to_confirm")
            return
        try:  # the notice to both parties is the reply
            if pending == "cancel_appointment":
                appointments.cancel(self.session, self.case, actor=self.actor, party=party, settings=self.settings,
                                    now=self.now, confirmed=True)
            else:  # asked for when the message came: a photo sent before it was for this case (lifecycle)
                appointments.withdraw(self.session, self.case, actor=self.actor, party=party, settings=self.settings,
                                      now=self.now, confirmed=True, requested=(self.openid, self.row.received_at))
        except TransitionRefused:
            self.status()

    # -- where things stand -------------------------------------------------------

    def status(self) -> None:
        if self.case is None or self.party is None:
            self.closed_case_status()
            return
        summary = offers.appointment_summary(self.case, self.language)
        what_now = self._what_now()
        detail = summary if what_now in ("", summary) else "\n".join(filter(None, (summary, what_now)))
        self.say("conv.status", case_no=self.case.case_no,
                 state=messages.text(f"state.{self.case.status.value}", self.language), detail=detail)

    def closed_case_status(self) -> None:
        """No open case: the notice that closed their latest one, as a text in their language (the outcome and the
        officer's whole note, which its template card may have cut), if it closed lately; else how to start. Each
        closing notice but the outcome says how to start again; the menu and "help" do too."""
        closing = dispatch.closing_notice_since(self.session, self.openid, self.now - CLOSED_CASE_SHOWN_FOR)
        if closing is None:
            self.say("conv.no_case")
            return
        try:
            told = dispatch.render(self.session, closing).text
        except (KeyError, ValueError):  # a payload that never rendered (the dispatcher failed it): nothing to show
            self.say("conv.no_case")
            return
        self.say_text(told)

    def next_step(self) -> None:
        """Tell the driver what is still needed, or offer slots to whoever completed the case."""
        case, party = self.case, self.party
        if case is None or party is None or case.status not in cases.COLLECTING_STATUSES:
            return
        step, _waiting = next_step(case, party, self.settings, self.language)
        if step:
            self.say_text(step)
        elif case.status is CaseStatus.DRAFT:
            lifecycle.apply(self.session, case, "become_ready", actor=self.actor, party=party,
                            settings=self.settings, now=self.now)
            self._offer("booking.offer_intro")
        else:
            self.say("conv.ready_hint")

    def _refused(self, transition: str, *, quiet_reasons: tuple[str, ...] = (), details: dict | None = None,
                 then_what_now: bool = False) -> bool:
        """Say why the sender may not do this now (True), or nothing (False) when the lifecycle allows it;
        ``then_what_now``: and what they are to do instead, in the same reply (acceptance pass: the other driver's
        location was refused, and nothing said what next)."""
        assert self.case is not None and self.party is not None
        refused = lifecycle.refusal(self.case, transition, actor=self.actor, party=self.party,
                                    settings=self.settings, now=self.now, details=details)
        if refused is None or refused.reason in quiet_reasons:
            return False
        self.say(_REFUSAL_KEYS.get((transition, refused.reason)) or _REFUSAL_KEYS.get((transition, refused.code))
                 or "conv.not_now")
        if then_what_now:
            self.say_text(self._what_now())
        return True


# Why a driver's command is refused, by (transition, reason) or (transition, error code).
_REFUSAL_KEYS = {
    ("set_location", "not_allowed"): "conv.location_reporter_only",
    ("set_location", "sealed"): "conv.details_sealed",
    ("set_location", "wrong_state"): "conv.details_sealed",
    ("set_detail", "sealed"): "conv.details_sealed",
    ("set_detail", "wrong_state"): "conv.details_sealed",
    ("set_detail", "other_party_plate"): "conv.plate_is_the_other_partys",
    ("withdraw", "not_allowed"): "conv.withdraw_reporter_only",
}


def _coordinates(message) -> tuple[float, float] | None:
    """(lat, lng) of a location push, or None when they are missing, not numbers, off the globe or (0, 0)."""
    try:
        lat, lng = float(message.location_x), float(message.location_y)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    if lat == 0 and lng == 0:  # "Null Island": what a phone without a fix sends, never a road
        return None
    return lat, lng
