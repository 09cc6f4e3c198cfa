"""The conversation of DESIGN.md §5: what a driver's message does to their case.

One :class:`Conversation` handles one inbound message inside one unit of
work: it changes the case and writes the replies to the outbox, and both
commit together with the inbox row marked done (exactly one effect).
Network work (downloading a photo) happens before, in ``processing.py``.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.booking import api as booking
from accident_service.cases import service as cases
from accident_service.models import Case, CaseStatus, InboundMessage, Notification, Party, PartyRole
from accident_service.notify.outbox import enqueue
from accident_service.runtime import Runtime
from accident_service.wechat import preferences
from accident_service.wechat.parsing import IntentKind, classify

REPORT_KEYS = {"REPORT_ACCIDENT"}
STATUS_KEYS = {"MY_CASE"}
JOIN_SCENE_PREFIX = "join:"


class Conversation:
    def __init__(self, session: Session, runtime: Runtime, message, row: InboundMessage, now: datetime) -> None:
        self.session = session
        self.runtime = runtime
        self.settings = runtime.settings
        self.message = message
        self.row = row
        self.now = now
        self.openid = str(message.source)
        self._reply_count = 0
        self.intent = classify(str(message.content or "")) if getattr(message, "type", "") == "text" else None
        found = cases.open_case_for(session, self.openid, for_update=True)
        self.case: Case | None = found[0] if found else None
        self.party: Party | None = found[1] if found else None
        self.language = preferences.language_for(session, self.openid, self.party)

    # -- replies ---------------------------------------------------------
    def say(self, key: str, **params: object) -> None:
        self.tell(self.openid, self.language, key, **params)

    def tell(self, openid: str, language: str, key: str, **params: object) -> None:
        self._reply_count += 1
        enqueue(self.session, openid=openid, kind="reply", text=messages.text(key, language, **params),
                dedupe_key=f"reply:{self.row.id}:{self._reply_count}", now=self.now,
                case_id=self.case.id if self.case else None, language=language)

    def tell_partner(self, key: str, **params: object) -> None:
        other = self._partner()
        if other is not None:
            self.tell(other.openid, other.language, key, **params)

    def _partner(self) -> Party | None:
        if self.case is None or self.party is None:
            return None
        return self.case.party(PartyRole.B if self.party.role is PartyRole.A else PartyRole.A)

    # -- dispatch --------------------------------------------------------
    def run(self, prepared_photo=None, *, told_saving: bool = False) -> None:
        self.told_saving = told_saving
        kind = self.message.type
        if kind == "text":
            self.on_text(str(self.message.content or ""))
        elif kind == "image":
            self.on_image(prepared_photo)
        elif kind == "location":
            point = _coordinates(self.message)
            if point is None:
                self.say("conv.location_invalid")
            else:
                self.on_location(*point, str(self.message.label or ""))
        elif kind == "event":
            self.on_event(self.message.event)
        else:
            self.say("conv.help")

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
            self.say("conv.help")
        # unsubscribe, location reports, template results: nothing to say

    def on_text(self, content: str) -> None:
        intent = self.intent or classify(content)
        handlers = {
            IntentKind.REPORT: lambda: self.start(),
            IntentKind.STATUS: lambda: self.status(),
            IntentKind.HELP: lambda: self.say("conv.help"),
            IntentKind.LANGUAGE: lambda: self.set_language(str(intent.value)),
            IntentKind.JOIN_CODE: lambda: self.join(str(intent.value)),
            IntentKind.PLATE: lambda: self.set_detail("plate", str(intent.value)),
            IntentKind.PHONE: lambda: self.set_detail("phone", str(intent.value)),
            IntentKind.CHOICE: lambda: self.choose(int(intent.value)),
            IntentKind.RETAKE: lambda: self.retake(intent.value),
            IntentKind.RESCHEDULE: lambda: self.reschedule(),
            IntentKind.CANCEL: lambda: self.cancel(),
        }
        handlers.get(intent.kind, self.not_understood)()

    def not_understood(self) -> None:
        """Mid-case, say what is expected now rather than the general help."""
        step = self._next_step_text() if self.case is not None and self.party is not None \
            and self.case.status in cases.COLLECTING_STATUSES else ""
        if step:
            self.say("conv.not_understood")
            self.say_text(step)
        else:
            self.say("conv.help")

    # -- actions ---------------------------------------------------------
    def start(self) -> None:
        case, party, created = cases.start_case(self.session, openid=self.openid, language=self.language,
                                                settings=self.settings, now=self.now)
        self.case, self.party = case, party
        if created:
            self.say("conv.case_started", case_no=case.case_no, total=len(self.settings.PHOTO_CHECKLIST))
            self._invite_partner()
        elif case.status in cases.COLLECTING_STATUSES:
            self.say("conv.case_resumed", case_no=case.case_no)
        else:  # already booked: say where things stand rather than start over
            self.status()
            return
        self.next_step()

    def _invite_partner(self) -> None:
        """The dispatcher creates the temporary QR code (an API call) and sends it with the code."""
        assert self.case is not None
        self._reply_count += 1
        enqueue(self.session, openid=self.openid, kind="join_invite",
                text=messages.text("conv.join_invite", self.language, join_code=self.case.join_code),
                dedupe_key=f"reply:{self.row.id}:{self._reply_count}", now=self.now, case_id=self.case.id,
                language=self.language,
                template_data={"scene": f"{JOIN_SCENE_PREFIX}{self.case.join_code}",
                               "join_code": self.case.join_code,
                               "expire_seconds": self.settings.JOIN_QR_EXPIRE_SECONDS})

    def _invite_sent(self) -> bool:
        assert self.case is not None
        return self.session.scalar(select(Notification.id).where(
            Notification.case_id == self.case.id, Notification.kind == "join_invite").limit(1)) is not None

    def join(self, code: str, *, by_qr: bool = False) -> None:
        try:
            case, party, newly = cases.join_case(self.session, code=code, openid=self.openid,
                                                 language=self.language, settings=self.settings, now=self.now,
                                                 typed=not by_qr)
        except cases.JoinRefused as refused:
            # A scanned code was never typed: do not ask to check and resend it.
            reason = "unknown_qr" if by_qr and refused.code == "unknown_code" else refused.code
            self.say(f"conv.join_refused.{reason}")
            return
        self.case, self.party = case, party
        self.say("conv.joined", case_no=case.case_no)
        if newly:
            self.tell_partner("conv.partner_joined", case_no=case.case_no)
        self.next_step()

    def on_image(self, prepared) -> None:
        if self.case is None or self.party is None:
            self.start()
        elif not self._invite_sent():
            # The case was opened by this photo (before the download): greet as if started by text.
            self.say("conv.case_started", case_no=self.case.case_no, total=len(self.settings.PHOTO_CHECKLIST))
            self._invite_partner()
        from accident_service.photos.intake import record_photo

        outcome = record_photo(self.session, self.runtime, case=self.case, party=self.party, prepared=prepared,
                               inbound_id=self.row.id, now=self.now)
        cases.touch(self.case, self.settings, self.now)
        if self.told_saving:
            self.say("conv.photo_saved_late")
        if not outcome.accepted:
            self.say(f"photos.reject.{outcome.code}", **outcome.params)
            self.next_step(photos_only=True)
            return
        for warning in outcome.warnings:
            if warning == "capture_time_old":
                self.say("conv.photo_warning_old")
        if outcome.replaced:
            self.say("conv.photo_replaced", n=outcome.item)
        elif outcome.extra:
            self.say("conv.photo_extra")
        else:
            self.say("conv.photo_received", received=outcome.received, total=outcome.required)
        if outcome.replaced and self.case.status is CaseStatus.RETAKE_REQUESTED:
            booking.retake_done(self.session, self.runtime, self.case, now=self.now, photo_id=outcome.photo_id)
        self.next_step()

    def on_location(self, lat: float, lng: float, label: str) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        cases.set_location(self.session, self.case, self.party, lat=lat, lng=lng, label=label,
                           settings=self.settings, now=self.now)
        self.say("conv.location_saved", label=label or f"{lat:.5f}, {lng:.5f}")
        self.next_step()

    def set_detail(self, field: str, value: str) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        cases.set_party_detail(self.session, self.case, self.party, field=field, value=value,
                               settings=self.settings, now=self.now)
        self.say(f"conv.{field}_saved", **{field: value})
        self.next_step()

    def set_language(self, language: str) -> None:
        self.language = messages.normalise_language(language)
        if self.party is not None:
            self.party.language = self.language
        preferences.remember_language(self.session, self.openid, self.language, self.now)
        self.say("conv.language_set")

    def retake(self, item: int | None) -> None:
        total = len(self.settings.PHOTO_CHECKLIST)
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if cases.evidence_sealed(self.case, self.party):
            self.say("photos.reject.evidence_locked")
            return
        if self.case.status is CaseStatus.RETAKE_REQUESTED:
            item = self.party.retake_item  # the one the desk asked for, whatever number was sent
        if not isinstance(item, int) or not 1 <= item <= total:
            self.say("conv.retake_which", total=total)
            return
        self.party.retake_item = item
        self.say("conv.retake_ask", n=item, item=self._item_name(item))

    def choose(self, number: int) -> None:
        if self.case is None or self.party is None or not self.case.offered_slot_ids:
            self.say("conv.choice_without_offer")
            return
        if self.party.role is not PartyRole.A:
            self.say("conv.only_reporter_books")
            return
        result = booking.book_choice(self.session, self.runtime, self.case, self.party, number, now=self.now)
        if not result.booked:
            self._offer(result.reason_key)

    def reschedule(self) -> None:
        if self.case is None or booking.active_appointment(self.case) is None:
            self.say("conv.nothing_to_reschedule")
            return
        self._offer("booking.reschedule_offer")

    def cancel(self) -> None:
        if self.case is None or self.party is None:
            self.say("conv.no_case")
            return
        if booking.active_appointment(self.case) is not None:
            booking.cancel(self.session, self.runtime, self.case, actor_type="party",
                           actor=self.party.role.value, now=self.now)
            return
        case_no = self.case.case_no
        cases.close_case(self.session, self.case, CaseStatus.CANCELLED, actor_type="party",
                         actor=self.party.role.value, now=self.now)
        self.say("conv.cancelled_case", case_no=case_no)
        self.tell_partner("conv.case_cancelled_partner", case_no=case_no)

    def status(self) -> None:
        if self.case is None:
            self.say("conv.no_case")
            return
        detail = booking.appointment_summary(self.case, self.language) or self._next_step_text()
        self.say("conv.status", case_no=self.case.case_no,
                 state=messages.text(f"state.{self.case.status.value}", self.language), detail=detail)

    # -- guidance --------------------------------------------------------
    def _item_name(self, n: int) -> str:
        codes = self.settings.PHOTO_CHECKLIST
        code = codes[n - 1] if 1 <= n <= len(codes) else "extra"
        key = f"checklist.{code}"
        return messages.text(key, self.language) if key in messages.catalogue() else code

    def _next_step_text(self) -> str:
        assert self.case is not None and self.party is not None
        need = cases.missing(self.case, self.settings)
        if need.photos_received < need.photos_required:
            n = self._next_photo_item()
            return messages.text("conv.ask_photo", self.language, n=n, total=need.photos_required,
                                 item=self._item_name(n))
        if need.location:
            return messages.text("conv.ask_location", self.language)
        mine = {f for role, f in need.details if role == self.party.role.value}
        if "plate" in mine:
            return messages.text("conv.ask_plate", self.language)
        if "phone" in mine:
            return messages.text("conv.ask_phone", self.language)
        if need.party_b:
            return messages.text("conv.wait_party_b", self.language, join_code=self.case.join_code)
        if need.details:
            return messages.text("conv.wait_other_details", self.language)
        return ""

    def _next_photo_item(self) -> int:
        assert self.case is not None
        have = {p.item for p in cases.accepted_photos(self.case)}
        return next(n for n in range(1, len(self.settings.PHOTO_CHECKLIST) + 1) if n not in have)

    def next_step(self, *, photos_only: bool = False) -> None:
        """Tell the driver what is still needed, or offer slots once the case is complete."""
        if self.case is None or self.party is None or self.case.status not in cases.COLLECTING_STATUSES:
            return
        need = cases.missing(self.case, self.settings)
        if photos_only and need.photos_received >= need.photos_required:
            return
        if not need.is_empty:
            if self.case.status is CaseStatus.READY:
                self.case.status = CaseStatus.DRAFT
            self.say_text(self._next_step_text())
            return
        if self.case.status is CaseStatus.DRAFT:
            self.case.status = CaseStatus.READY
            cases.record_audit(self.session, actor_type="system", actor=None, action="case.ready",
                               case_id=self.case.id, now=self.now)
        if self.party.role is PartyRole.A:
            self._offer("booking.offer_intro")
        else:
            self.say("conv.wait_reporter_choice")
            reporter = self.case.party(PartyRole.A)
            if reporter is not None and not self.case.offered_slot_ids:
                self._offer("booking.offer_intro", to=reporter)

    def _offer(self, intro_key: str, to: Party | None = None) -> None:
        assert self.case is not None
        recipient = to or self.party
        text = booking.offer_text(self.session, self.runtime, self.case, recipient.language, intro_key=intro_key,
                                  now=self.now)
        self._reply_count += 1
        enqueue(self.session, openid=recipient.openid, kind="reply", text=text,
                dedupe_key=f"reply:{self.row.id}:{self._reply_count}", now=self.now, case_id=self.case.id,
                language=recipient.language)

    def say_text(self, text: str) -> None:
        if not text:
            return
        self._reply_count += 1
        enqueue(self.session, openid=self.openid, kind="reply", text=text,
                dedupe_key=f"reply:{self.row.id}:{self._reply_count}", now=self.now,
                case_id=self.case.id if self.case else None, language=self.language)


def _coordinates(message) -> tuple[float, float] | None:
    """(lat, lng) of a location push, or None when they are missing, not numbers or off the globe."""
    try:
        lat, lng = float(message.location_x), float(message.location_y)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return lat, lng
