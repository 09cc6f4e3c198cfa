"""Talking to the service as drivers do: signed pushes through the WeChat emulator, then reading what came back.

Cases are set up as committed rows (``tests.support.case_rows``) at a desk
whose slots are known, so a test starts where it matters; everything after
that goes through the real ``/wechat`` endpoint, the inbox and the outbox.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from accident_service.models import Case, CaseStatus, Notification, PartyRole, Slot, WorkStatus
from accident_service.runtime import Runtime
from accident_service.sandbox.images import make_jpeg
from tests.support import case_rows
from tests.support.case_rows import Place
from tests.support.live import LiveServer, drain

A = "oConvDriverA000000000000001"
B = "oConvDriverB000000000000002"
C = "oConvDriverC000000000000003"  # a third driver: joins, or is in another case
LANGUAGES = ("zh", "en")
ROLES = (PartyRole.A, PartyRole.B)
OPENID = {PartyRole.A: A, PartyRole.B: B}
_media = itertools.count(1)
_msg_ids = itertools.count(int(time.time() * 1000) % 10**12 * 1000)


class QuickLiveServer(LiveServer):
    """The app on loopback, stopping in milliseconds: werkzeug's serve_forever polls for shutdown every 0.5 s
    by default, which a suite starting a server per test pays on every test."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)


@dataclass(frozen=True)
class Desk:
    """The station every conversation test books at; slot ids by their start (minutes after T0)."""

    place: Place
    slots: dict[int, int]  # minutes after T0 -> slot id
    wechat: Any = None  # the platform emulator: seeded drivers have written to the account there too

    @property
    def offered_for_ready(self) -> list[int]:
        """The slots a ready case is offered at T0, in order (earliest first, 30 minutes' lead)."""
        return [self.slots[m] for m in (45, 120, 240)]


def open_desk(runtime: Runtime, now: datetime, wechat=None) -> Desk:
    """A station by the accident with slots at T0+45 min, +2 h, +4 h (booked cases' slot), +5 h and one started."""
    with runtime.unit_of_work() as session:
        where = case_rows.place(session, now, code="GZ-CONV")
        for minutes in (45, 120):
            session.add(Slot(station_id=where.station_id, starts_at=now + timedelta(minutes=minutes),
                             ends_at=now + timedelta(minutes=minutes + 30), capacity=2, booked=0))
        session.flush()
        rows = session.execute(select(Slot.id, Slot.starts_at).where(Slot.station_id == where.station_id))
        slots = {int((starts_at - now).total_seconds() // 60): slot_id for slot_id, starts_at in rows}
    return Desk(where, slots, wechat)


def seed(runtime: Runtime, desk: Desk, status: CaseStatus, **kwargs) -> int:
    """A committed case in ``status`` between drivers A and B (see ``case_rows.case_in``); returns its id.

    Each party has been answered before in this case (a sent reply in the outbox), as every driver in
    a real case has: the greeting of the reporter, the welcome of the driver who joined. They wrote to
    the account minutes ago (the platform and our ledger know: ``case_rows.case_in(acted=True)``).
    """
    kwargs.setdefault("openids", (A, B))
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        case = case_rows.case_in(session, status, now=now, where=desk.place, settings=runtime.settings, **kwargs)
        for party in case.parties:
            if desk.wechat is not None and kwargs.get("acted", True) and party.case_open:
                desk.wechat.note_user_activity(party.openid)
            session.add(Notification(dedupe_key=f"seed:{case.id}:{party.role.value}", case_id=case.id,
                                     openid=party.openid, kind="reply", language=party.language,
                                     payload={"text": "(earlier)"}, status=WorkStatus.DONE, attempts=1,
                                     next_attempt_at=now, created_at=now, sent_at=now))
        return case.id


def case_of(runtime: Runtime, case_id: int) -> Case:
    """The case with its parties, photos and appointments loaded (detached, for reading)."""
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        _ = [case.parties, case.photos, [a.slot.station for a in case.appointments]]
        return case


def say(wechat, runtime: Runtime, openid: str, content: str) -> str:
    """Send a text and process it; returns the last message the sender received (their reply)."""
    assert wechat.post_text(openid, content).text == "success"
    drain(runtime)
    return last(wechat, openid)


def last(wechat, openid: str) -> str:
    received = wechat.messages_to(openid)
    assert received, f"{openid} received nothing"
    return received[-1]


def speak(wechat, runtime: Runtime, openid: str, language: str) -> None:
    """Chinese is the default; English only after the driver sends "English", as drivers do.

    Posted, not yet processed: the inbox handles a driver's messages in order, so it takes effect before
    whatever the test sends next (the reply to it is checked by the language tests).
    """
    if language == "en":
        assert wechat.post_text(openid, "English").text == "success"


def photo(wechat, seed_text: str, width: int = 1600, height: int = 1200) -> str:
    """Register a real, sharp JPEG with the emulator; returns its media id."""
    media_id = f"m{next(_media)}-{seed_text}"
    return wechat.add_media(media_id, make_jpeg(media_id, width, height))


def post_file(wechat, openid: str, media_id: str, title: str = "IMG_0001.jpg"):
    """A file sent from the chat (MsgType file), which wechatpy has no class for: posted as raw XML."""
    xml = (f"<xml><ToUserName><![CDATA[{wechat.original_id}]]></ToUserName>"
           f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
           f"<MsgType><![CDATA[file]]></MsgType><Title><![CDATA[{title}]]></Title>"
           f"<Description><![CDATA[]]></Description><MediaId><![CDATA[{media_id}]]></MediaId>"
           f"<FileTotalLen>123456</FileTotalLen><FileMd5><![CDATA[0123456789abcdef0123456789abcdef]]></FileMd5>"
           f"<MsgId>{next(_msg_ids)}</MsgId></xml>")
    wechat.note_user_activity(openid)
    return wechat.post_raw(xml, openid=openid)


def post_media_message(wechat, openid: str, kind: str, media_id: str):
    """A voice or video message (what a driver may send mid-case), as the platform pushes it."""
    extra = "<Format><![CDATA[amr]]></Format>" if kind == "voice" \
        else f"<ThumbMediaId><![CDATA[{media_id}-thumb]]></ThumbMediaId>"
    xml = (f"<xml><ToUserName><![CDATA[{wechat.original_id}]]></ToUserName>"
           f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
           f"<MsgType><![CDATA[{kind}]]></MsgType><MediaId><![CDATA[{media_id}]]></MediaId>{extra}"
           f"<MsgId>{next(_msg_ids)}</MsgId></xml>")
    wechat.note_user_activity(openid)
    return wechat.post_raw(xml, openid=openid)


def spread(values, combos=tuple(itertools.product(ROLES, LANGUAGES))) -> list[tuple]:
    """Each value at least once, and every (role, language) at least once: (value, role, language) triples."""
    count = max(len(values), len(combos))
    return [(values[i % len(values)], *combos[i % len(combos)]) for i in range(count)]
