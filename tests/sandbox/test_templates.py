"""Template messages as the platform handles them since 2023-05-04 (WECHAT.md §5 "Template")."""

from __future__ import annotations

import time

import pytest
from wechatpy import parse_message

from accident_service.sandbox.emulator import WeChatEmulator
from accident_service.sandbox.template_fields import value_problem
from tests.sandbox.calls import get_token, send_template
from tests.sandbox.conftest import PlatformClock

BOOKED = {"character_string1": "character_string", "thing2": "thing", "time3": "time", "car_number4": "car_number"}
BOOKED_DATA = {"character_string1": "20261125-ABCDE", "thing2": "天河事故处理点", "time3": "2026年11月25日 14:00",
               "car_number4": "粤A12345"}


@pytest.fixture
def token(emulator: WeChatEmulator) -> str:
    emulator.register_template("TPL-BOOKED", BOOKED)
    emulator.post_text("o-user", "hello")
    return get_token(emulator)["access_token"]


def test_a_card_shows_the_keyword_values_in_the_templates_order(emulator, token) -> None:
    data = {"car_number4": "粤A12345", "time3": "2026年11月25日 14:00", "thing2": "天河事故处理点",
            "character_string1": "20261125-ABCDE"}

    assert send_template(emulator, token, "o-user", "TPL-BOOKED", data)["errcode"] == 0

    assert emulator.messages_to("o-user") == [
        "[模板] 20261125-ABCDE / 天河事故处理点 / 2026年11月25日 14:00 / 粤A12345"]
    [card] = emulator.cards_to("o-user")
    assert list(card.shown) == list(BOOKED) and card.not_shown == {}


def test_first_remark_colours_and_unknown_keys_are_accepted_but_not_shown(emulator, token) -> None:
    data = {**BOOKED_DATA, "first": "预约成功！", "remark": "请带好驾驶证\n和行驶证",
            "thing2": {"value": "天河事故处理点", "color": "#FF0000"}, "case_no": "not in the template"}

    result = send_template(emulator, token, "o-user", "TPL-BOOKED", data, url="https://example.invalid/c/1")

    assert result["errcode"] == 0
    [card] = emulator.cards_to("o-user")
    assert card.shown["thing2"] == "天河事故处理点" and card.url == "https://example.invalid/c/1"
    assert set(card.not_shown) == {"first", "remark", "case_no"}
    [seen] = emulator.messages_to("o-user")
    assert "预约成功" not in seen and "驾驶证" not in seen and "#FF0000" not in seen


def test_an_unregistered_template_is_refused(emulator, token) -> None:
    result = send_template(emulator, token, "o-user", "TPL-NEVER-ADDED", BOOKED_DATA)

    assert result["errcode"] == 40037
    assert emulator.sent == [] and emulator.refusal_counts("template") == {40037: 1}


@pytest.mark.parametrize("key, value, problem", [
    ("thing2", "天" * 21, "invalid"),  # over 20 characters
    ("thing2", "天河\n事故处理点", "invalid"),  # a line break
    ("character_string1", "A" * 21, "invalid"),  # type allows 32, every keyword 20
    ("character_string1", "案件20261125", "invalid"),  # no Chinese in a character_string
    ("time3", "25 Nov 14:00-14:30", "invalid"),
    ("car_number4", "粤A-12345", "invalid"),
    ("thing2", "", "is empty"),
    ("time3", None, "is empty"),  # the key is missing
])
def test_a_keyword_breaking_its_rules_answers_47003(emulator, token, key: str, value, problem: str) -> None:
    data = {k: v for k, v in BOOKED_DATA.items() if k != key}
    if value is not None:
        data[key] = value

    result = send_template(emulator, token, "o-user", "TPL-BOOKED", data)

    assert result == {"errcode": 47003, "errmsg": f"argument invalid! data.{key}.value {problem}"}
    assert emulator.messages_to("o-user") == []


@pytest.mark.parametrize("field_type, good, bad", [
    ("thing", ["天河事故处理点", "A-1 号窗口（东）"], ["x" * 21]),
    ("number", ["3", "12.50", "1" * 20], ["-3", "3 个", "1,000"]),
    ("letter", ["ABC", "abc"], ["AB1", "中"]),
    ("symbol", ["-", "~!@#%"], ["+-*/=?", "a"]),
    ("character_string", ["20261125-ABCDE", "A1_b2#c3"], ["案件1", "with space"]),
    ("time", ["15:01", "2019年10月1日 15:01", "2023/8/9 08:00~08:30", "2026/11/25 14:00:00"],
     ["2024-08-08", "25 Nov 14:00", "11月25日 14:00-14:30", "25:00", "2026-02-30 10:00",
      "2023-08-09 08:00~08:30"]),  # the last is 22 characters: over every keyword's 20
    ("date", ["2019年10月1日", "2026-11-25", "2026-1-5~2026-1-6"], ["14:00", "2026-13-01"]),
    ("amount", ["¥12.50", "12元", "0.01元", "100"], ["12.5 元", "¥1234567890123"]),
    ("phone_number", ["13800138000", "+86-020-12345678"], ["138 0013 8000", "tel12345"]),
    ("car_number", ["粤A12345", "粤AD12345", "粤A8Z888挂"], ["粤A-12345", "粤A1234567", "粤粤A1234"]),
    ("name", ["张三", "ZhangSan", "Li-Lei"], ["张三1", "十一个汉字十一个汉字十", "A" * 21]),
    ("phrase", ["配送中", "已预约"], ["预约成功了吗呢", "ok", "约1"]),
])
def test_category_field_types(field_type: str, good: list[str], bad: list[str]) -> None:
    assert [value_problem(field_type, value) for value in good] == [None] * len(good)
    assert [value_problem(field_type, value) for value in bad] == ["invalid"] * len(bad)


def test_const_fields_take_only_approved_values(emulator, token) -> None:
    emulator.register_template("TPL-STATUS", {"const1": "const", "thing2": "thing"},
                               const_values={"const1": ["已预约", "已取消"]})

    def send(value: str) -> int:
        return send_template(emulator, token, "o-user", "TPL-STATUS", {"const1": value, "thing2": "天河"})["errcode"]

    assert [send("已预约"), send(""), send("已改约")] == [0, 0, 47003]


def test_types_can_be_read_from_the_keyword_names(emulator, token) -> None:
    emulator.register_template("TPL-NAMES", ["character_string1", "phrase2", "keyword3"])

    data = {"character_string1": "A1", "phrase2": "已预约", "keyword3": "任意内容"}
    assert send_template(emulator, token, "o-user", "TPL-NAMES", data)["errcode"] == 0
    assert send_template(emulator, token, "o-user", "TPL-NAMES", {**data, "phrase2": "booked"})["errcode"] == 47003


def test_registering_checks_types_names_and_the_limit_of_25(emulator) -> None:
    with pytest.raises(ValueError, match="unknown field type"):
        emulator.register_template("TPL-X", {"thing1": "text"})
    with pytest.raises(ValueError, match="no type in the name"):
        emulator.register_template("TPL-X", ["case_no"])
    with pytest.raises(ValueError, match="not a keyword name"):
        emulator.register_template("TPL-X", {"case_no": "character_string"})
    with pytest.raises(ValueError, match="not a keyword name"):
        emulator.register_template("TPL-X", {"thing1": "time"})
    with pytest.raises(ValueError, match="approved values"):
        emulator.register_template("TPL-X", {"const1": "const"})
    for n in range(25):
        emulator.register_template(f"TPL-{n}", ["thing1"])
    with pytest.raises(ValueError, match="at most 25"):
        emulator.register_template("TPL-26", ["thing1"])


def test_a_repeated_client_msg_id_is_dropped_for_ten_minutes(emulator, token, platform_clock: PlatformClock) -> None:
    first = send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA, client_msg_id="booked:42")
    platform_clock.advance(599)

    repeat = send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA, client_msg_id="booked:42")

    assert repeat == first == {"errcode": 0, "errmsg": "ok", "msgid": first["msgid"]}
    assert len(emulator.messages_to("o-user")) == 1 and emulator.duplicate_templates_dropped == 1
    platform_clock.advance(1)
    later = send_template(emulator, get_token(emulator)["access_token"], "o-user", "TPL-BOOKED", BOOKED_DATA,
                          client_msg_id="booked:42")
    assert later["msgid"] != first["msgid"] and len(emulator.messages_to("o-user")) == 2


def test_a_client_msg_id_is_per_user_and_a_refused_send_does_not_take_it(emulator, token) -> None:
    emulator.post_text("o-other", "hello")
    bad = {**BOOKED_DATA, "thing2": "天" * 21}

    assert send_template(emulator, token, "o-user", "TPL-BOOKED", bad, client_msg_id="n:1")["errcode"] == 47003
    assert send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA, client_msg_id="n:1")["errcode"] == 0
    assert send_template(emulator, token, "o-other", "TPL-BOOKED", BOOKED_DATA, client_msg_id="n:1")["errcode"] == 0
    assert [len(emulator.messages_to(o)) for o in ("o-user", "o-other")] == [1, 1]


def test_an_overlong_client_msg_id_is_refused(emulator, token) -> None:
    result = send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA, client_msg_id="x" * 65)

    assert result["errcode"] == 45067


@pytest.mark.parametrize("status", ["failed:user block", "failed:system failed"])
def test_a_template_that_does_not_reach_the_user_is_taken_and_its_result_push_says_so(emulator, token, receiver,
                                                                                    status) -> None:
    """WECHAT.md §5: the send answers ok with a msgid; TEMPLATESENDJOBFINISH then carries what became of it."""
    emulator.set_template_result("o-user", status)
    result = send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA)

    assert result["errcode"] == 0 and isinstance(result["msgid"], int)
    assert emulator.messages_to("o-user") == [] and emulator.refusal_counts() == {}
    assert [(t["touser"], t["msgid"], t["status"]) for t in emulator.templates_not_delivered] == [
        ("o-user", result["msgid"], status)]
    event = wait_for_template_result(receiver)
    assert (event.source, event.id, event.status) == ("o-user", result["msgid"], status)

    emulator.set_template_result("o-user", None)  # back to normal: shown, and "success"
    again = send_template(emulator, token, "o-user", "TPL-BOOKED", BOOKED_DATA)
    assert len(emulator.messages_to("o-user")) == 1
    assert wait_for_template_result(receiver, msgid=again["msgid"]).status == "success"


def wait_for_template_result(receiver, *, msgid: int | None = None, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in list(receiver.requests):
            message = parse_message(request.body)
            if getattr(message, "event", "") == "templatesendjobfinish" and msgid in (None, message.id):
                return message
        time.sleep(0.02)
    raise AssertionError("no TEMPLATESENDJOBFINISH push")
