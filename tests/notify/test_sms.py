"""The SMS channel: the real Tencent Cloud SDK over real HTTP to the emulator on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from accident_service.notify.channels import DeliveryError, Rendered
from accident_service.notify.sms import SmsChannel, SmsTemplateChannel, delivery_error, session_context_for
from accident_service.sandbox.sms_emulator import SmsEmulator
from tests.support.sms import BOOKED_TEMPLATE, channel_for, running_sms_emulator, sms_settings

PHONE = "13800138000"
PARAMS = ["A123", "明天9点", "天河"]
BOOKED_SMS = "【交警快处】您的案件A123已预约，明天9点在天河处理"


@pytest.fixture
def sms() -> Iterator[SmsEmulator]:
    with running_sms_emulator() as running:
        yield running


@pytest.fixture
def channel(sms: SmsEmulator) -> SmsChannel:
    return channel_for(sms)


def failure(call, *args, **kwargs) -> DeliveryError:
    """The DeliveryError ``call(*args, **kwargs)`` raises."""
    with pytest.raises(DeliveryError) as caught:
        call(*args, **kwargs)
    assert caught.value.channel == "sms"
    return caught.value


def kind_of(error: DeliveryError) -> str:
    """"retryable", "permanent" or "configuration" (neither flag); never both, never reroute."""
    assert not (error.retryable and error.permanent) and not error.reroute
    return "retryable" if error.retryable else "permanent" if error.permanent else "configuration"


def test_a_notice_reaches_the_phone_with_the_sign_and_returns_the_serial_number(sms, channel):
    serial = channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="booked:42:A")

    assert sms.messages_to(PHONE) == [BOOKED_SMS]
    assert serial == sms.sent[-1].serial_no and serial
    assert sms.sent[-1].phone == "+8613800138000" and sms.sent[-1].session_context == "booked:42:A"


@pytest.mark.parametrize("written", ["+8613800138001", "8613800138001", "008613800138001", "138 0013-8001"])
def test_mainland_numbers_go_out_as_plus_86(sms, channel, written):
    channel.send_notice(written, BOOKED_TEMPLATE, PARAMS, session_context="k")

    assert sms.sent[-1].phone == "+8613800138001"


def test_the_bound_channel_sends_the_rendered_sms_params_with_the_dedupe_key_as_session_context(sms, tmp_path):
    bound = SmsChannel.from_settings(sms_settings(sms, tmp_path)).for_kind("BOOKED")
    assert isinstance(bound, SmsTemplateChannel) and bound.name == "sms" and bound.template_id == BOOKED_TEMPLATE

    bound.send(PHONE, Rendered(text="unused by SMS", sms_params=tuple(PARAMS)), dedupe_key="booked:42:A")

    assert sms.messages_to(PHONE) == [BOOKED_SMS]
    assert sms.sent[-1].session_context == "booked:42:A"


def test_a_kind_without_an_sms_template_has_no_channel_and_sms_off_refuses_to_build(sms, tmp_path):
    assert SmsChannel.from_settings(sms_settings(sms, tmp_path)).for_kind("reminder") is None
    with pytest.raises(ValueError, match="SMS is off"):
        SmsChannel.from_settings(sms_settings(sms, tmp_path, SMS_SDK_APP_ID="", SMS_SECRET_ID="", SMS_SECRET_KEY="",
                                              SMS_SIGN_NAME="", SMS_TEMPLATE_BOOKED=""))


def test_a_dedupe_key_too_long_for_session_context_goes_as_its_hash(sms, channel):
    long_key = "k" * 600
    channel.for_template(BOOKED_TEMPLATE).send(PHONE, Rendered("", sms_params=tuple(PARAMS)), dedupe_key=long_key)

    assert sms.sent[-1].session_context == session_context_for(long_key)
    assert session_context_for(long_key).startswith("sha256:") and session_context_for("short") == "short"


@pytest.mark.parametrize(("code", "expected"), [
    ("InternalError.Timeout", "retryable"),
    ("InternalError.OtherError", "retryable"),
    ("RequestLimitExceeded", "retryable"),
    ("LimitExceeded.DeliveryFrequencyLimit", "retryable"),
    ("LimitExceeded.PhoneNumberThirtySecondLimit", "retryable"),
    ("LimitExceeded.AppDailyLimit", "retryable"),
    ("InvalidParameterValue.IncorrectPhoneNumber", "permanent"),
    ("FailedOperation.PhoneNumberInBlacklist", "permanent"),
    ("LimitExceeded.PhoneNumberOneHourLimit", "permanent"),
    ("LimitExceeded.PhoneNumberDailyLimit", "permanent"),
    ("LimitExceeded.PhoneNumberSameContentDailyLimit", "permanent"),
    ("FailedOperation.TemplateIncorrectOrUnapproved", "permanent"),
    ("FailedOperation.SignatureIncorrectOrUnapproved", "permanent"),
    ("FailedOperation.ContainSensitiveWord", "permanent"),
    ("AuthFailure.SecretIdNotFound", "configuration"),
    ("AuthFailure.SignatureExpire", "configuration"),
    ("UnauthorizedOperation.ServiceSuspendDueToArrears", "configuration"),
    ("FailedOperation.InsufficientBalanceInSmsPackage", "configuration"),
    ("InvalidParameterValue.SdkAppIdNotExist", "configuration"),
    ("InternalError.RequestTimeException", "configuration"),
])
def test_each_platform_error_maps_to_what_trying_again_can_do(sms, channel, code, expected):
    sms.inject_error(code)

    error = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))

    assert error.code == code and kind_of(error) == expected
    assert sms.messages_to(PHONE) == []


def test_unknown_codes_fall_to_their_family():
    assert kind_of(delivery_error("InternalError.Brandnew", "")) == "retryable"
    assert kind_of(delivery_error("InvalidParameterValue.Brandnew", "")) == "permanent"
    assert kind_of(delivery_error("AuthFailure.Brandnew", "")) == "configuration"
    assert kind_of(delivery_error("Unheard.Of", "")) == "retryable"  # the outbox's attempt limit ends it


def test_a_wrong_secret_key_is_refused_by_the_signature_check_as_a_configuration_problem(sms):
    error = failure(lambda: channel_for(sms, secret_key="not-the-key").send_notice(
        PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))

    assert error.code == "AuthFailure.SignatureFailure" and kind_of(error) == "configuration"
    assert sms.messages_to(PHONE) == []


def test_an_unknown_secret_id_and_a_skewed_clock_are_configuration_problems(sms):
    error = failure(lambda: channel_for(sms, secret_id="AKIDsomeoneElse").send_notice(
        PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))
    assert error.code == "AuthFailure.SecretIdNotFound" and kind_of(error) == "configuration"

    with running_sms_emulator(clock=lambda: time.time() + 600) as ahead:
        error = failure(lambda: channel_for(ahead).send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))
    assert error.code == "AuthFailure.SignatureExpire" and kind_of(error) == "configuration"


def test_the_platforms_own_refusals_map_as_permanent(sms, channel):
    def code_for(**send) -> str:
        arguments = {"phone": PHONE, "template_id": BOOKED_TEMPLATE, "params": PARAMS, "session_context": "k"}
        error = failure(lambda: channel.send_notice(**(arguments | send)))
        assert kind_of(error) == "permanent"
        return str(error.code)

    assert code_for(template_id="9999999") == "FailedOperation.TemplateIncorrectOrUnapproved"
    assert code_for(params=PARAMS[:2]) == "FailedOperation.TemplateParamSetNotMatchApprovedTemplate"
    assert code_for(template_id="7654321", params=["12a"]) == "InvalidParameterValue.TemplateParameterFormatError"
    assert failure(lambda: channel_for(sms, sign_name="别的签名").send_notice(
        PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k")).code == "FailedOperation.SignatureIncorrectOrUnapproved"
    assert sms.sent == []


def test_the_frequency_policy_same_text_within_30_seconds_retries_the_third_of_the_day_does_not(sms, channel):
    channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="first")

    again = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="again"))
    assert again.code == "LimitExceeded.PhoneNumberThirtySecondLimit" and kind_of(again) == "retryable"

    channel.send_notice(PHONE, BOOKED_TEMPLATE, ["B456", "后天9点", "越秀"], session_context="second")
    third = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, ["C789", "周五", "海珠"],
                                                session_context="third"))
    assert third.code == "LimitExceeded.PhoneNumberDailyLimit" and kind_of(third) == "permanent"
    assert len(sms.messages_to(PHONE)) == 2


@pytest.mark.parametrize(("params", "code"), [
    (["A1234567", "明天9点", "天河"], "InvalidParameterValue.TemplateParameterLengthLimit"),  # 8 characters
    (["A123", "明天上午九点整", "天河"], "InvalidParameterValue.TemplateParameterLengthLimit"),  # 7, all Chinese
    (["A123", "明天9点", "t.cn/x"], "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter"),
    (["A123", "明天9点", "www.a"], "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter"),
])
def test_parameters_over_the_limits_are_refused_before_sending_never_shortened(sms, channel, params, code):
    error = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, params, session_context="k"))

    assert error.code == code and kind_of(error) == "permanent"
    assert "refused before sending" in str(error) and "{" in str(error)  # names the parameter
    assert sms.request_count == 0


def test_six_characters_of_any_kind_pass_and_the_limit_follows_the_account(sms, channel):
    channel.send_notice(PHONE, BOOKED_TEMPLATE, ["A12345", "明天上午九点", "天河 区体育"], session_context="k")
    assert sms.messages_to(PHONE) == ["【交警快处】您的案件A12345已预约，明天上午九点在天河 区体育处理"]

    twelve = ["GZ2026112501", "明天9点", "天河"]
    # Our limit raised to 12 for an older account while the platform still says 6: the platform's answer maps too.
    error = failure(lambda: channel_for(sms, max_param_chars=12).send_notice(
        "13900139000", BOOKED_TEMPLATE, twelve, session_context="k"))
    assert error.code == "InvalidParameterValue.TemplateParameterLengthLimit" and kind_of(error) == "permanent"
    assert "refused before sending" not in str(error)
    with running_sms_emulator(max_param_chars=12) as older_account:
        channel_for(older_account, max_param_chars=12).send_notice(PHONE, BOOKED_TEMPLATE, twelve, session_context="k")
        assert older_account.messages_to(PHONE) == ["【交警快处】您的案件GZ2026112501已预约，明天9点在天河处理"]


def test_count_number_length_and_session_context_are_refused_before_sending(sms, channel):
    count = failure(lambda: channel.for_template(BOOKED_TEMPLATE, param_count=3).send(
        PHONE, Rendered("", sms_params=("A123", "明天9点")), dedupe_key="k"))
    assert count.code == "FailedOperation.TemplateParamSetNotMatchApprovedTemplate" and kind_of(count) == "permanent"

    for number in ("12345", "+12025550123", "23800138000", ""):
        wrong = failure(channel.send_notice, number, BOOKED_TEMPLATE, PARAMS, session_context="k")
        assert wrong.code == "InvalidParameterValue.IncorrectPhoneNumber" and kind_of(wrong) == "permanent"

    long_sign = channel_for(sms, sign_name="签" * 490)
    too_long = failure(lambda: long_sign.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))
    assert too_long.code == "InvalidParameterValue.ContentLengthLimit" and kind_of(too_long) == "permanent"

    context = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="x" * 512))
    assert kind_of(context) == "permanent"
    assert sms.request_count == 0


def test_errors_never_show_the_whole_number(sms, channel):
    sms.inject_error("FailedOperation.PhoneNumberInBlacklist")
    error = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))

    assert "****" in str(error) and "13800138000" not in str(error)


def test_a_slow_platform_times_out_as_retryable_and_the_sms_may_still_arrive(sms):
    sms.delay(5)
    started = time.monotonic()

    error = failure(lambda: channel_for(sms, timeout_seconds=1).send_notice(
        PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))

    assert time.monotonic() - started < 3.5  # the channel's timeout, not the gateway's 5 s
    assert kind_of(error) == "retryable" and error.code is None and "timed out" in str(error)
    # The platform went on with it: why a retried timeout may send twice (SendSms has no idempotency key).
    deadline = time.monotonic() + 10
    while not sms.messages_to(PHONE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sms.messages_to(PHONE) == [BOOKED_SMS]


def test_no_platform_and_a_failing_gateway_are_retryable(sms, channel):
    sms.inject_http_status(502)
    gateway = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))
    assert kind_of(gateway) == "retryable" and gateway.code is None

    sms.stop()
    down = failure(lambda: channel.send_notice(PHONE, BOOKED_TEMPLATE, PARAMS, session_context="k"))
    assert kind_of(down) == "retryable" and down.code is None


def test_a_bad_endpoint_or_timeout_is_refused_when_the_channel_is_built():
    account = {"sdk_app_id": "1", "secret_id": "id", "secret_key": "key", "sign_name": "交警快处",
               "region": "ap-guangzhou"}
    with pytest.raises(ValueError, match="endpoint"):
        SmsChannel(**account, endpoint_url="ftp://sms.example")
    with pytest.raises(ValueError, match="timeout"):
        SmsChannel(**account, timeout_seconds=0)
