"""How a notice reads in each channel's shape: the SMS parameters, checked against the real SMS limits.

A must-read notice that WeChat cannot carry goes by SMS (README, "Notices"); Tencent refuses a template
parameter over the account's limit (6 characters for accounts opened since 2024-01-25), so the parameters
are short by design and every must-read kind must pass the SMS emulator as the sandbox's templates read.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.cases.facts import NOTICE_KINDS
from accident_service.notice_kinds import MUST_READ
from accident_service.notify import notices
from accident_service.notify.sms import SmsChannel
from accident_service.sandbox import console
from accident_service.sandbox.sms_emulator import SmsEmulator
from accident_service.settings import SettingsError, load_settings
from tests.support.sms import notice_templates, running_sms_emulator

WRITTEN = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)  # 17:30 in Guangzhou
VISIT = {"case_no": "20261125-ABCDE", "fingerprint": "0123456789abcdef", "station": "天河事故处理点",
         "address": "广州市天河路 1 号", "timezone": "Asia/Shanghai",
         "starts_at": "2026-11-26T06:00:00+00:00", "ends_at": "2026-11-26T06:30:00+00:00"}
#: What each must-read kind's facts hold besides the visit (as cases.facts writes them).
EXTRA = {"retake": {"item": "2", "item_code": "collision_point", "reason": "看不清", "variant": "taker",
                    "due_at": "2026-11-25T11:45:00+00:00"},
         "completed": {"liability": "A", "note": "A 全责"}, "cancelled": {"variant": "desk", "reason": "重复报案"},
         "withdrawn": {"variant": "self"}}


def facts_for(kind: str) -> dict:
    return VISIT | EXTRA.get(kind, {}) | {"to": "A"}


def test_the_parameters_are_the_case_s_last_part_the_date_and_the_time_of_what_the_notice_is_about():
    assert notices.render("booked", "zh", facts_for("booked"), at=WRITTEN).sms_params == ("ABCDE", "11月26日", "14:00")
    assert notices.render("retake", "zh", facts_for("retake"), at=WRITTEN).sms_params == ("ABCDE", "11月25日", "19:45")
    assert notices.render("completed", "en", facts_for("completed"), at=WRITTEN).sms_params == (
        "ABCDE", "11月25日", "17:30")  # when the case ended, not the visit it had


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(NOTICE_KINDS),
       case_no=st.from_regex(r"\A[0-9]{8}-[A-Z0-9]{5}\Z") | st.text(min_size=1, max_size=40),
       starts=st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                                       timezones=st.just(UTC)),
       due=st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                                    timezones=st.just(UTC)),
       zone=st.sampled_from(["Asia/Shanghai", "Asia/Urumqi", "UTC", "Pacific/Kiritimati", "America/Adak"]),
       at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)))
def test_every_parameter_fits_the_strictest_account_whatever_the_case_and_time(kind, case_no, starts, due, zone, at):
    facts = {"case_no": case_no, "timezone": zone}
    if starts is not None:
        facts["starts_at"] = starts.isoformat()
    if due is not None:
        facts["due_at"] = due.isoformat()

    params = notices.sms_params(kind, facts, at)

    assert len(params) == 3 and all(0 < len(p) <= notices.SMS_PARAM_CHARACTERS for p in params)
    moment = due or (starts if starts is not None and kind not in ("completed", "withdrawn", "expired", "no_show")
                     else at)
    local = moment.astimezone(ZoneInfo(zone))
    assert params[1:] == (f"{local.month}月{local.day}日", f"{local:%H:%M}")


@pytest.fixture(scope="module")
def sms() -> Iterator[SmsEmulator]:
    with running_sms_emulator(daily_limit_per_number=None, same_text_seconds=None) as emulator:
        yield emulator


@pytest.mark.parametrize("kind", sorted(MUST_READ))
def test_every_must_read_notice_passes_tencent_s_limits_as_the_sandbox_templates_read(sms, kind, tmp_path):
    """The default account limit (SMS_PARAM_MAX_CHARS=6) in the channel and in the emulator; nothing cut."""
    phone = f"1380013{sorted(MUST_READ).index(kind):04d}"
    settings_ = load_settings({"DATA_DIR": str(tmp_path)} | notice_templates(sms), environ={})
    assert settings_.SMS_PARAM_MAX_CHARS == 6 == sms.max_param_chars
    rendered = notices.render(kind, "zh", facts_for(kind), at=WRITTEN)

    SmsChannel.from_settings(settings_).for_kind(kind).send(phone, rendered, dedupe_key=f"{kind}:1:A")

    [text] = sms.messages_to(phone)
    case_ref, day, time_ = rendered.sms_params
    assert text == "【交警快处】" + console.SMS_TEMPLATE_TEXTS[kind].replace("{1}", case_ref).replace(
        "{2}", day).replace("{3}", time_)
    assert "ABCDE" in text and "月" in text


def test_a_larger_account_limit_is_a_setting_and_a_smaller_one_is_refused_with_its_name(tmp_path):
    assert load_settings({"DATA_DIR": str(tmp_path), "SMS_PARAM_MAX_CHARS": "12"}, environ={}).SMS_PARAM_MAX_CHARS == 12
    with pytest.raises(SettingsError, match="SMS_PARAM_MAX_CHARS"):
        load_settings({"DATA_DIR": str(tmp_path), "SMS_PARAM_MAX_CHARS": "5"}, environ={})


def test_a_template_card_keeps_its_keywords_within_20_characters_on_one_line():
    long = VISIT | {"station": "广州市天河区天河路第一交通事故快速处理服务中心\n二楼", "to": "A"}
    card = notices.render("booked", "zh", long, at=WRITTEN).template_data
    assert all(len(v["value"]) <= notices.KEYWORD_CHARACTERS and "\n" not in v["value"] for v in card.values())
    assert "first" not in card and "remark" not in card
