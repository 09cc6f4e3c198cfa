"""What a driver hears when their message fails for good."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from accident_service.messages import text
from accident_service.models import InboundMessage, Notification
from accident_service.wechat import inbox
from accident_service.wechat.processing import tell_sender_it_was_lost
from accident_service.wechat.xml_gate import parse_inbound

HEAD = "<xml><ToUserName>gh_x</ToUserName><FromUserName>oLost</FromUserName><CreateTime>1764036000</CreateTime>"
PUSHES = {
    "text": HEAD + "<MsgType>text</MsgType><Content>粤A12345</Content><MsgId>71</MsgId></xml>",
    "image": HEAD + "<MsgType>image</MsgType><PicUrl>http://127.0.0.1/p.jpg</PicUrl><MediaId>m</MediaId>"
                    "<MsgId>72</MsgId></xml>",
    "click": HEAD + "<MsgType>event</MsgType><Event>CLICK</Event><EventKey>REPORT_ACCIDENT</EventKey></xml>",
    "subscribe": HEAD + "<MsgType>event</MsgType><Event>subscribe</Event></xml>",
}


def _lose(runtime, kind: str) -> list[str]:
    xml = PUSHES[kind]
    row_id = inbox.store_inbound(runtime, parse_inbound(xml), xml, runtime.clock.now())
    with runtime.unit_of_work() as session:
        tell_sender_it_was_lost(session, session.get(InboundMessage, row_id), runtime.clock.now())
    with runtime.unit_of_work() as session:
        return [n.payload["text"] for n in session.scalars(select(Notification).where(Notification.openid == "oLost"))]


@pytest.mark.parametrize(("kind", "key"), [("text", "conv.message_lost"), ("click", "conv.message_lost"),
                                           ("image", "conv.photo_lost")])
def test_what_the_driver_did_is_asked_for_again(runtime, kind, key):
    assert _lose(runtime, kind) == [text(key, "zh")]


def test_a_follow_event_is_not_answered(runtime):
    assert _lose(runtime, "subscribe") == []


def test_the_sweep_sends_each_message_s_notices_right_after_it_and_no_one_else_s(wechat_runtime, wechat):
    """The scheduler's sweep, like the hand-off: after each message what is due for the people it wrote to
    (an earlier notice to the same person first); another person's due notice is left to the dispatcher."""
    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.notify.test_dispatch import acted, add, load
    from tests.wechat.test_inbox import load as load_message
    from tests.wechat.test_inbox import push

    rt = wechat_runtime
    someone_elses = add(rt, "oSweepOther", "another person's notice", wechat=wechat)
    earlier = add(rt, "oSweepA", "an earlier notice to the driver", wechat=wechat)
    acted(rt, wechat, "oSweepA")
    message_id = push(rt, "oSweepA")

    assert run_inbox_once(rt, "sched-test", limit=5) == 1

    assert load_message(rt, message_id).status is WorkStatus.DONE
    assert [m["touser"] for m in wechat.sent] == ["oSweepA", "oSweepA"]
    assert wechat.sent[0]["text"] == "an earlier notice to the driver" and load(rt, earlier).status is WorkStatus.DONE
    assert load(rt, someone_elses).status is WorkStatus.PENDING


def test_the_sweep_sends_the_lost_notice_of_a_message_it_gives_up_on_at_once(wechat_runtime, wechat, clock):
    """Given up while claiming (its worker died on every attempt): the sender is asked again right away, not
    after the dispatcher's next round."""
    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.notify.test_dispatch import acted
    from tests.wechat.test_inbox import load as load_message
    from tests.wechat.test_inbox import past_lease, push

    rt = wechat_runtime
    acted(rt, wechat, "oSweepLost")
    message_id = push(rt, "oSweepLost")
    for attempt in range(rt.settings.INBOX_MAX_ATTEMPTS):
        assert inbox.claim_due(rt, f"dying-{attempt}") == [message_id]
        past_lease(clock)  # ...and the worker dies without a word

    assert run_inbox_once(rt, "sched-test", limit=5) == 0

    assert load_message(rt, message_id).status is WorkStatus.FAILED
    assert [(m["touser"], m["text"]) for m in wechat.sent] == [("oSweepLost", text("conv.message_lost", "zh"))]


def test_a_sweep_busy_with_others_still_gives_a_photo_waiting_out_an_outage_its_retry(wechat_runtime, clock):
    """A backlog that fills every run of the sweep must not keep a waiting photo from its retries until its
    patience (DRAFT_EXPIRY_MINUTES) runs out and the driver is asked to send it again."""
    from datetime import timedelta

    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.wechat.test_inbox import failing_with, push
    from tests.wechat.test_inbox import load as load_message

    rt = wechat_runtime
    outage = inbox.RetryLater("storage unavailable", keep_trying_until=clock.now() + timedelta(hours=2))
    photo = push(rt, "oWaitingPhoto", image=True)
    assert inbox.claim_due(rt, "w1", limit=1) == [photo]
    assert inbox.process(rt, photo, "w1", failing_with(outage)) == "retry"
    backlog = [push(rt, f"oBacklog{n}") for n in range(3)]  # more of others' messages due than a run may take
    clock.set(load_message(rt, photo).next_attempt_at)

    assert run_inbox_once(rt, "sched-test", limit=2) == 3

    assert load_message(rt, photo).attempts == 2  # its retry came, after two of the others
    assert [load_message(rt, n).status for n in backlog] == [WorkStatus.DONE, WorkStatus.DONE, WorkStatus.PENDING]


def test_a_message_given_up_on_holds_back_the_driver_s_later_one_only_until_the_sweep(wechat_runtime, wechat, clock):
    """A claim never takes a message whose worker died on its last attempt, and that message, unfinished,
    holds the driver's later one back; the sweep gives it up, then processes the later one."""
    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.notify.test_dispatch import acted
    from tests.wechat.test_inbox import load as load_message
    from tests.wechat.test_inbox import past_lease, push

    rt = wechat_runtime
    acted(rt, wechat, "oHeldBack")
    stuck = push(rt, "oHeldBack")
    for attempt in range(rt.settings.INBOX_MAX_ATTEMPTS):
        assert inbox.claim_due(rt, f"dying-{attempt}") == [stuck]
        past_lease(clock)
    later = push(rt, "oHeldBack")
    assert inbox.claim_due(rt, "web", openid="oHeldBack") == []  # held back, and the stuck one not taken

    assert run_inbox_once(rt, "sched-test", limit=5) == 1

    assert load_message(rt, stuck).status is WorkStatus.FAILED
    assert load_message(rt, later).status is WorkStatus.DONE
    assert wechat.sent[0] == {**wechat.sent[0], "touser": "oHeldBack", "text": text("conv.message_lost", "zh")}
    assert [m["touser"] for m in wechat.sent] == ["oHeldBack", "oHeldBack"]  # then the later one's answer


def _driver_writes_and_hears_first(rt, wechat, openid: str, waited: int, text_of_waited: str) -> None:
    """``openid`` writes; the sweep processes it: the notice that waited goes first, then the answer."""
    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.notify.test_dispatch import load
    from tests.wechat.test_inbox import push

    wechat.note_user_activity(openid)
    push(rt, openid)

    assert run_inbox_once(rt, "sched-test", limit=5) == 1

    assert [m["touser"] for m in wechat.sent] == [openid, openid]
    assert wechat.sent[0]["text"] == text_of_waited
    assert load(rt, waited).status is WorkStatus.DONE


def test_after_an_outage_a_driver_s_message_is_answered_at_once_behind_the_notice_that_waited(wechat_runtime,
                                                                                              wechat, clock):
    """A notice waiting out a retry (the platform was busy) would hold their answer back for its backoff
    (up to minutes); the driver's message brings it forward: it goes first, then the answer."""
    from accident_service.models import WorkStatus
    from accident_service.notify.dispatch import dispatch_due
    from tests.notify.test_dispatch import add, load

    rt = wechat_runtime
    waited = add(rt, "oAfterOutage", "a notice sent while the platform was busy", wechat=wechat)
    wechat.inject_error("message/custom/send", -1, times=1)
    assert dispatch_due(rt, "dispatcher") == 1
    assert load(rt, waited).status is WorkStatus.PENDING and load(rt, waited).next_attempt_at > clock.now()

    _driver_writes_and_hears_first(rt, wechat, "oAfterOutage", waited, "a notice sent while the platform was busy")


def test_a_notice_that_waited_for_the_driver_goes_with_their_next_message(wechat_runtime, wechat):
    """No allowance, no template, no SMS: it waits ("held"); the driver's message opens the allowance, and it
    goes out right after the message, before the answer."""
    from accident_service.models import WorkStatus
    from accident_service.notify.dispatch import dispatch_due
    from tests.notify.test_dispatch import add, load

    rt = wechat_runtime
    waited = add(rt, "oHeld", "a notice that waited for the driver")  # no template or SMS is for a plain text
    assert dispatch_due(rt, "dispatcher") == 1
    assert load(rt, waited).status is WorkStatus.HELD and wechat.sent == []

    _driver_writes_and_hears_first(rt, wechat, "oHeld", waited, "a notice that waited for the driver")


def test_a_template_s_failed_result_that_overtakes_the_record_of_its_send_is_processed_again_later(
        wechat_settings_overrides, wechat, clock):
    """The platform may push TEMPLATESENDJOBFINISH before the worker that sent the template has recorded the send:
    the push is tried again after a backoff, and then sends the notice back to be delivered another way."""
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings

    rt = build_runtime(load_settings({**wechat_settings_overrides, "WECHAT_TEMPLATE_BOOKED": "tpl-booked"},
                                     environ={}), clock=clock)
    try:
        _overtaken_template_result(rt, clock)
    finally:
        rt.close()


def _overtaken_template_result(rt, clock) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.notify.test_dispatch import BOOKED_FACTS, add_notice, load
    from tests.wechat.test_inbox import load as load_message

    booked = add_notice(rt, "oEarly", "booked", BOOKED_FACTS, language="zh")
    with rt.unit_of_work() as session:  # a worker is calling the platform with it
        session.execute(update(Notification).where(Notification.id == booked).values(
            status=WorkStatus.PROCESSING, leased_by="w0", lease_until=clock.now() + timedelta(minutes=1),
            channel="template", address="oEarly", sending_at=clock.now()))
    xml = ("<xml><ToUserName>gh_x</ToUserName><FromUserName>oEarly</FromUserName><CreateTime>1764036000</CreateTime>"
           "<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>4242</MsgID>"
           "<Status>failed:user block</Status></xml>")
    message_id = inbox.store_inbound(rt, parse_inbound(xml), xml, clock.now())

    run_inbox_once(rt, "w1")
    assert load_message(rt, message_id).status is WorkStatus.PENDING  # tried again later
    text = HEAD.replace("oLost", "oEarly") + "<MsgType>text</MsgType><Content>状态</Content><MsgId>73</MsgId></xml>"
    text_id = inbox.store_inbound(rt, parse_inbound(text), text, clock.now())
    run_inbox_once(rt, "w1")  # what the driver sends meanwhile does not wait for it
    assert load_message(rt, text_id).status is WorkStatus.DONE
    assert load_message(rt, message_id).status is WorkStatus.PENDING
    with rt.unit_of_work() as session:  # the worker records the send
        session.execute(update(Notification).where(Notification.id == booked).values(
            status=WorkStatus.DONE, leased_by=None, lease_until=None, sending_at=None, sent_at=clock.now(),
            platform_msgid=4242))
    clock.advance(timedelta(minutes=1))
    run_inbox_once(rt, "w1")

    assert load_message(rt, message_id).status is WorkStatus.DONE
    row = load(rt, booked)
    # Sent back: with no allowance, no SMS and templates not reaching them, it waits for the person.
    assert (row.status, row.channel, row.platform_msgid) == (WorkStatus.HELD, None, None)


def test_a_click_whose_worker_died_is_answered_within_the_click_s_minute(wechat_runtime, wechat, clock):
    """A menu click's answer may go for a minute after it (WECHAT.md §5). A worker that dies on the click leaves it
    to the sweep after a text's short lease, so the answer still goes within that minute; under a photo's lease
    (INBOX_LEASE_SECONDS, 60 s) the allowance had closed by then, and the answer waited for the driver's next
    message (acceptance pass: a scheduler SIGKILLed mid-click)."""
    from datetime import timedelta

    from accident_service.models import WorkStatus
    from accident_service.wechat.processing import run_inbox_once
    from tests.wechat.test_inbox import load as load_message

    rt = wechat_runtime
    clicked_at = clock.now()
    wechat.note_user_activity("oClickDied", "CLICK")  # the platform opens its minute as it pushes the click
    xml = (f"<xml><ToUserName><![CDATA[{wechat.original_id}]]></ToUserName>"
           f"<FromUserName><![CDATA[oClickDied]]></FromUserName><CreateTime>{int(clicked_at.timestamp())}</CreateTime>"
           "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event>"
           "<EventKey><![CDATA[REPORT_ACCIDENT]]></EventKey></xml>")
    message_id = inbox.store_inbound(rt, parse_inbound(xml), xml, clicked_at)
    assert inbox.claim_due(rt, "dies-mid-click") == [message_id]  # ... and the worker dies
    assert rt.settings.INBOX_LEASE_SECONDS >= 60

    clock.advance(seconds=30)  # the sweep, half a minute after the click
    assert run_inbox_once(rt, "sched-test", limit=5) == 1

    assert clock.now() - clicked_at < timedelta(minutes=1)
    assert load_message(rt, message_id).status is WorkStatus.DONE
    assert [m["touser"] for m in wechat.sent] and {m["touser"] for m in wechat.sent} == {"oClickDied"}
    with rt.unit_of_work() as session:
        assert session.scalars(select(Notification.status).where(Notification.openid == "oClickDied")).all() \
            and all(status is WorkStatus.DONE for status in session.scalars(
                select(Notification.status).where(Notification.openid == "oClickDied")))
