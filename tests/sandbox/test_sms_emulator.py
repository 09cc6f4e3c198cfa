"""The SMS emulator's own rules, over raw HTTP signed as Tencent documents it (no SDK, none of our client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests

from accident_service.sandbox.sms_emulator import SmsEmulator, tc3_signature
from tests.support.sms import CODE_TEMPLATE, running_sms_emulator, send_sms_body, signed_post

PHONE = "+8613800138000"
PARAMS = ["A123", "明天9点", "天河"]
# 2026-11-25 10:00 in Guangzhou.
MORNING_IN_GUANGZHOU = datetime(2026, 11, 25, 2, 0, tzinfo=UTC).timestamp()


class Clock:
    """The emulator's time, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(MORNING_IN_GUANGZHOU)


@pytest.fixture
def sms(clock: Clock) -> Iterator[SmsEmulator]:
    with running_sms_emulator(clock=clock) as running:
        yield running


def error_code(answer: dict) -> str:
    assert "SendStatusSet" not in answer
    return answer["Error"]["Code"]


def test_the_signature_follows_tencents_published_example():
    # https://cloud.tencent.com/document/api/382/52072 ("签名方法 v3"), the DescribeInstances example.
    payload = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    signature = tc3_signature("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", method="POST", uri="/", query="",
                              headers={"content-type": "application/json; charset=utf-8",
                                       "host": "cvm.tencentcloudapi.com"},
                              signed_headers=["content-type", "host"], payload=payload, timestamp=1551113065,
                              service="cvm")

    assert signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"


def test_a_signed_send_answers_like_the_api_and_the_phone_shows_the_signed_text(sms):
    answer = signed_post(sms, send_sms_body([PHONE], PARAMS, SessionContext="booked:42:A"))

    [status] = answer["SendStatusSet"]
    assert status["Code"] == "Ok" and status["Message"] == "send success" and status["SerialNo"]
    assert status | {"SerialNo": ""} == {"SerialNo": "", "PhoneNumber": PHONE, "Fee": 1,
                                         "SessionContext": "booked:42:A", "Code": "Ok",
                                         "Message": "send success", "IsoCode": "CN"}
    assert sms.messages_to("13800138000") == ["【交警快处】您的案件A123已预约，明天9点在天河处理"]


@pytest.mark.parametrize("written", ["+8613800138001", "8613800138001", "008613800138001", "13800138001"])
def test_mainland_numbers_are_accepted_with_or_without_the_country_code(sms, written):
    [status] = signed_post(sms, send_sms_body([written], PARAMS))["SendStatusSet"]

    assert status["Code"] == "Ok" and status["PhoneNumber"] == "+8613800138001"


def test_a_malformed_number_fails_alone_in_its_send_status(sms):
    statuses = signed_post(sms, send_sms_body(["12345", PHONE], PARAMS))["SendStatusSet"]

    assert [s["Code"] for s in statuses] == ["InvalidParameterValue.IncorrectPhoneNumber", "Ok"]
    assert statuses[0]["SerialNo"] == "" and statuses[0]["Fee"] == 0
    assert len(sms.sent) == 1


def test_wrong_secrets_stale_timestamps_and_tampered_bodies_are_refused(sms, clock):
    body = send_sms_body([PHONE], PARAMS)

    assert error_code(signed_post(sms, body, secret_key="guessed")) == "AuthFailure.SignatureFailure"
    assert error_code(signed_post(sms, body, secret_id="AKIDother")) == "AuthFailure.SecretIdNotFound"
    assert error_code(signed_post(sms, body, timestamp=int(clock.now) - 301)) == "AuthFailure.SignatureExpire"
    assert error_code(signed_post(sms, body, tamper=b'{"PhoneNumberSet": ["+8613900000000"]}')) \
        == "AuthFailure.SignatureFailure"
    assert error_code(signed_post(sms, body, Authorization="Bearer nothing")) == "AuthFailure.InvalidAuthorization"
    assert sms.sent == []


def test_an_unsigned_request_is_refused(sms):
    response = requests.post(sms.endpoint_url + "/", json=send_sms_body([PHONE], PARAMS), timeout=5)

    assert response.json()["Response"]["Error"]["Code"] == "AuthFailure.InvalidAuthorization"
    assert response.json()["Response"]["RequestId"]


def test_only_sendsms_of_version_2021_01_11_in_an_sms_region_is_served(sms):
    body = send_sms_body([PHONE], PARAMS)

    assert error_code(signed_post(sms, body, X_TC_Action="PullSmsSendStatus")) == "InvalidAction"
    assert error_code(signed_post(sms, body, X_TC_Version="2019-07-11")) == "NoSuchVersion"
    assert error_code(signed_post(sms, body, X_TC_Region="ap-singapore")) == "UnsupportedRegion"
    assert error_code(signed_post(sms, b"{not json")) == "FailedOperation.JsonParseFail"


@pytest.mark.parametrize(("fields", "code"), [
    ({"SmsSdkAppId": "1400999999"}, "InvalidParameterValue.SdkAppIdNotExist"),
    ({"SignName": "别的签名"}, "FailedOperation.SignatureIncorrectOrUnapproved"),
    ({"SignName": ""}, "FailedOperation.SignatureIncorrectOrUnapproved"),
    ({"TemplateId": "9999999"}, "FailedOperation.TemplateIncorrectOrUnapproved"),
    ({"TemplateParamSet": ["A123", "明天9点"]}, "FailedOperation.TemplateParamSetNotMatchApprovedTemplate"),
    ({"TemplateParamSet": ["A1234567", "明天9点", "天河"]}, "InvalidParameterValue.TemplateParameterLengthLimit"),
    ({"TemplateParamSet": ["A123", "明天上午九点整", "天河"]}, "InvalidParameterValue.TemplateParameterLengthLimit"),
    ({"TemplateParamSet": ["A123", "明天9点", "a.com"]}, "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter"),
    ({"TemplateId": CODE_TEMPLATE, "TemplateParamSet": ["12ab"]}, "InvalidParameterValue.TemplateParameterFormatError"),
    ({"SessionContext": "x" * 512}, "InvalidParameter.InvalidParameters"),
    ({"PhoneNumberSet": []}, "MissingParameter.EmptyPhoneNumberSet"),
    ({"PhoneNumberSet": [PHONE] * 201}, "LimitExceeded.PhoneNumberCountLimit"),
    ({"PhoneNumberSet": PHONE}, "InvalidParameter"),
])
def test_the_request_rules(sms, fields, code):
    assert error_code(signed_post(sms, send_sms_body([PHONE], PARAMS) | fields)) == code
    assert sms.sent == []


def test_a_verification_code_is_up_to_six_digits(sms):
    [status] = signed_post(sms, send_sms_body([PHONE], ["012345"], template_id=CODE_TEMPLATE))["SendStatusSet"]

    assert status["Code"] == "Ok" and sms.messages_to(PHONE) == ["【交警快处】您的验证码为012345，5分钟内有效"]


def test_the_whole_text_is_at_most_500_characters_and_over_70_bills_in_parts_of_67(clock):
    with running_sms_emulator(clock=clock) as sms:
        sms.register_template("1111111", "案件{1}：" + "请" * 480)
        sms.register_template("2222222", "案件{1}：" + "请" * 500)

        [status] = signed_post(sms, send_sms_body([PHONE], ["A1"], template_id="1111111"))["SendStatusSet"]
        too_long = signed_post(sms, send_sms_body([PHONE], ["A1"], template_id="2222222"))

    assert status["Code"] == "Ok" and status["Fee"] == 8  # 6 + 5 + 480 = 491 characters: 8 parts of 67
    assert error_code(too_long) == "InvalidParameterValue.ContentLengthLimit"


def test_templates_number_their_parameters_from_one_without_gaps(sms):
    with pytest.raises(ValueError, match="without gaps"):
        sms.register_template("3333333", "案件{1}在{3}处理")


def test_one_identical_text_per_number_per_30_seconds(sms, clock):
    body = send_sms_body([PHONE], PARAMS)
    assert signed_post(sms, body)["SendStatusSet"][0]["Code"] == "Ok"

    clock.now += 29
    assert signed_post(sms, body)["SendStatusSet"][0]["Code"] == "LimitExceeded.PhoneNumberThirtySecondLimit"
    clock.now += 2
    assert signed_post(sms, body)["SendStatusSet"][0]["Code"] == "Ok"


def test_two_sms_per_number_per_calendar_day_in_china(sms, clock):
    for place in ("天河", "越秀"):
        assert signed_post(sms, send_sms_body([PHONE], ["A123", "明天9点", place]))["SendStatusSet"][0]["Code"] == "Ok"

    third = signed_post(sms, send_sms_body([PHONE], ["A123", "明天9点", "海珠"]))["SendStatusSet"][0]
    other_number = signed_post(sms, send_sms_body(["+8613900139000"], PARAMS))["SendStatusSet"][0]
    clock.now += 14 * 3600  # midnight in Guangzhou has passed (16:00 UTC)
    next_day = signed_post(sms, send_sms_body([PHONE], ["A123", "明天9点", "海珠"]))["SendStatusSet"][0]

    assert third["Code"] == "LimitExceeded.PhoneNumberDailyLimit" and other_number["Code"] == "Ok"
    assert next_day["Code"] == "Ok"


def test_the_frequency_policy_can_be_turned_off_as_in_the_console(clock):
    with running_sms_emulator(clock=clock, same_text_seconds=None, daily_limit_per_number=None) as sms:
        for _ in range(4):
            assert signed_post(sms, send_sms_body([PHONE], PARAMS))["SendStatusSet"][0]["Code"] == "Ok"


def test_injected_errors_come_as_the_api_sends_them(sms):
    sms.inject_error("InternalError.Timeout", times=2)
    sms.inject_error("LimitExceeded.PhoneNumberOneHourLimit")  # queued behind: per number, in the send status
    body = send_sms_body([PHONE], PARAMS)

    assert [error_code(signed_post(sms, body)) for _ in range(2)] == ["InternalError.Timeout"] * 2
    assert signed_post(sms, body)["SendStatusSet"][0]["Code"] == "LimitExceeded.PhoneNumberOneHourLimit"
    assert signed_post(sms, body)["SendStatusSet"][0]["Code"] == "Ok"
    assert len(sms.sent) == 1


def test_a_bad_signature_is_refused_before_any_injected_fault(sms):
    sms.inject_error("InternalError.Timeout")

    assert error_code(signed_post(sms, send_sms_body([PHONE], PARAMS), secret_key="guessed")) \
        == "AuthFailure.SignatureFailure"
    assert error_code(signed_post(sms, send_sms_body([PHONE], PARAMS))) == "InternalError.Timeout"


def test_gateway_failures_and_delays(sms):
    sms.inject_http_status(502)
    response = requests.post(sms.endpoint_url + "/", data=b"{}", timeout=5)
    assert response.status_code == 502

    sms.delay(5)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.post(sms.endpoint_url + "/", data=b"{}", timeout=0.5)
    assert time.monotonic() - started < 2.5  # the client's timeout, not the gateway's 5 s
    assert sms.request_count == 2


def test_the_endpoint_is_on_loopback_and_only_while_running():
    emulator = SmsEmulator("id", "key", "1400000001")
    with pytest.raises(RuntimeError):
        _ = emulator.endpoint
    with emulator:
        assert emulator.endpoint.startswith("127.0.0.1:") and emulator.endpoint_url == "http://" + emulator.endpoint
    emulator.stop()  # stopping twice is harmless
