"""The whole two-driver story under WeChat's real message rules, counted: what each driver receives.

Two drivers report, join, send their photos and details and book; the desk confirms; the reminder comes
more than 48 hours after either driver last wrote, when WeChat no longer lets a customer-service message
through. The emulator keeps the platform's rules on (allowances 45047/45015, template fields 47003,
client_msg_id, followers). Each driver must receive at most one message per push plus one per notice,
with no send refused, and each must-read notice exactly once — by a template card where one is
configured, else by SMS (the SMS emulator on loopback, Tencent's real SDK).
"""

from __future__ import annotations

import collections
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from accident_service import create_app, jobs
from accident_service.booking.slots import generate_slots
from accident_service.booking.station_file import load_station_file
from accident_service.booking.stations import import_stations
from accident_service.desk import actions
from accident_service.models import Case, InboundMessage, Notification, Slot, WorkStatus
from accident_service.notice_kinds import MUST_READ
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from tests.e2e.conftest import EXAMPLE_STATIONS
from tests.support.flows import report_until_ready
from tests.support.live import LiveServer, drain
from tests.support.sms import notice_templates, running_sms_emulator

A, B = "oCountA000000000000000000001", "oCountB000000000000000000002"
PHONES = {A: "+8613800138000", B: "+8613900139000"}  # as report_until_ready types them
STORY_NOTICES = ("booked", "confirmed", "reminder")
PLATFORM_RESULT = "event:templatesendjobfinish"  # pushed after each template (WECHAT.md §5)


@pytest.fixture(params=["templates", "sms"])
def story(request, wechat, wechat_settings_overrides, clock):
    """The app and a runtime with WeChat templates for every must-read notice, or with SMS in their place."""
    with running_sms_emulator(daily_limit_per_number=None) as sms:
        overrides = dict(wechat_settings_overrides)
        if request.param == "sms":
            overrides = {k: v for k, v in overrides.items() if not k.startswith("WECHAT_TEMPLATE_")}
            overrides |= notice_templates(sms)
        runtime = build_runtime(load_settings(overrides, environ={}), clock=clock)
        server = LiveServer(create_app(runtime=runtime)).start()
        wechat.callback_url = server.url + "/wechat"
        try:
            with runtime.unit_of_work() as session:  # the first free slots are three days away
                import_stations(session, load_station_file(EXAMPLE_STATIONS))
                generate_slots(session, start_date=(clock.now() + timedelta(days=3)).date(), days=2, now=clock.now())
            yield request.param, runtime, sms
        finally:
            server.stop()
            runtime.close()


def test_each_driver_gets_at_most_one_message_per_push_plus_one_per_notice_and_every_must_read_once(story, wechat,
                                                                                                 clock, capsys):
    channel, runtime, sms = story
    case = report_until_ready(wechat, runtime, A, B)
    wechat.post_text(B, "1")  # B made the case ready, so B has the list
    drain(runtime)
    with runtime.unit_of_work() as session:
        case = session.get(Case, case.id)
        actions.confirm(session, case, staff="officer1", settings=runtime.settings, now=clock.now())
        starts_at = session.scalar(select(Slot.starts_at).where(Slot.id == case.appointments[-1].slot_id))
    drain(runtime)
    clock.set(starts_at - timedelta(minutes=runtime.settings.REMINDER_MINUTES - 5))  # > 48 h after the last push
    assert clock.now().timestamp() - 48 * 3600 > max(m["time"] for m in wechat.sent)
    assert jobs.send_reminders(runtime, "w1") == 1
    drain(runtime)

    counts = {}
    with runtime.unit_of_work() as session:
        for driver in (A, B):
            pushes = session.scalar(select(func.count()).select_from(InboundMessage)  # the driver's, not the
                                    .where(InboundMessage.openid == driver,   # platform's template results
                                           InboundMessage.msg_type != PLATFORM_RESULT))
            rows = session.scalars(select(Notification).where(Notification.openid == driver)).all()
            notices = [row for row in rows if isinstance(row.payload, dict) and "notice" in row.payload]
            received = len(wechat.sent_to(driver)) + len(sms.sent_to(PHONES[driver]))
            by_channel = collections.Counter(row.channel for row in rows if row.status is WorkStatus.DONE)
            counts[driver] = {"pushes": pushes, "notices": len(notices), "received": received,
                              "by_channel": dict(by_channel)}
            assert received <= pushes + len(notices), counts[driver]
            for kind in STORY_NOTICES:  # every must-read notice of the story, exactly once, delivered
                [row] = [row for row in notices if row.kind == kind]
                assert row.status is WorkStatus.DONE and row.carried_by is None, (kind, row.last_error)
            reminder = next(row for row in notices if row.kind == "reminder")
            assert reminder.channel == ("template" if channel == "templates" else "sms")
            assert not [row for row in rows if row.status is not WorkStatus.DONE and row.kind in MUST_READ]
    with capsys.disabled():
        print(f"\n[{channel}] messages per driver for the whole story: "
              + "; ".join(f"{'A' if d == A else 'B'}: {c['received']} received for {c['pushes']} pushes and "
                          f"{c['notices']} notices, by {c['by_channel']}" for d, c in counts.items()))
    assert wechat.refusal_counts() == {}  # no 45047, 45015, 47003 (nor anything else) refused
    if channel == "sms":
        for driver in (A, B):
            [reminder_sms] = [t for t in sms.messages_to(PHONES[driver]) if "将于" in t]
            assert case.case_no.rsplit("-", 1)[-1] in reminder_sms
    else:
        assert sms.sent == []
