"""Notices by SMS through Tencent Cloud SMS (``SendSms``, API version 2021-01-11), the real SDK.

:class:`SmsChannel` holds the account (from settings) and sends one templated
message to one mainland mobile number: ``send_notice`` returns Tencent's
SerialNo or raises :class:`~accident_service.notify.channels.DeliveryError`.
The template is chosen by notice kind, so the :class:`Channel` shape
(``send(address, rendered, *, dedupe_key)``) is a small bound object,
:class:`SmsTemplateChannel`, got from ``for_kind(kind)`` (None when no
``SMS_TEMPLATE_<KIND>`` is set) or ``for_template(template_id)``; it sends
``rendered.sms_params`` and passes the dedupe key as SessionContext.

Limits checked before calling, so a message that cannot pass is refused here
with the code Tencent would have answered (and never half-sent):

* the number: a mainland mobile (11 digits, 1[3-9]…; +86/86/0086 prefixes
  accepted), sent as +86XXXXXXXXXXX;
* each template parameter at most ``max_param_chars`` characters, every
  character (Chinese, letter, digit, punctuation, space) counting one. The
  limit is per account, shown in the console: 6 for accounts opened after
  2024-01-25 (our default), 12 for older individual accounts. A parameter
  that is too long is **refused, not shortened**: a cut case number, time or
  address in a must-read notice is wrong information, which is worse than a
  visible failure (shorter parameters are the template's designer's job);
* no links in parameters; the whole text (sign and parameters) at most 500
  characters; the parameter count, when the caller knows the template's;
* SessionContext under 512 bytes (a longer dedupe key is sent as its SHA-256).

Every call has a timeout (``timeout_seconds``) and the SDK makes no retries of
its own: retrying is the dispatcher's decision. A timeout is ambiguous (the
platform may have sent the SMS) and is still retryable: for a must-read notice
twice is better than never, and SendSms has no idempotency key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sms.v20210111.models import SendSmsRequest
from tencentcloud.sms.v20210111.sms_client import SmsClient

from accident_service.notify.channels import SMS_CHANNEL, DeliveryError, Rendered

if TYPE_CHECKING:
    from accident_service.settings import Settings

log = logging.getLogger(__name__)

CHANNEL_NAME = SMS_CHANNEL
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_PARAM_CHARS = 6
MAX_MESSAGE_CHARS = 500
MAX_SESSION_CONTEXT_BYTES = 511  # "长度需小于512字节"
DEFAULT_ENDPOINT_URL = "https://sms.tencentcloudapi.com"
_MAINLAND_MOBILE = re.compile(r"(?:\+86|0086|86)?(1[3-9]\d{9})")
# Tencent refuses links in parameters (InvalidParameterValue.ProhibitedUseUrlInTemplateParameter).
_LINK = re.compile(r"(?i)[a-z][a-z0-9+.-]*://|www\.|\b[a-z0-9-]+\.[a-z]{2,}/")

# SendSms codes by what trying again can do (tencentcloud.sms.v20210111.errorcodes and
# https://cloud.tencent.com/document/api/382/55981#6.-.E9.94.99.E8.AF.AF.E7.A0.81).
RETRYABLE_CODES = frozenset({
    "InternalError.OtherError", "InternalError.SendAndRecvFail", "InternalError.Timeout",
    "InternalError.UnknownError", "InternalError.ParseBackendResponseFail",
    "RequestLimitExceeded", "LimitExceeded.DeliveryFrequencyLimit",
    # 30 seconds pass long before the dispatcher's next attempt.
    "LimitExceeded.PhoneNumberThirtySecondLimit",
    # Our application's daily cap (all numbers): lifts at midnight or when the operator raises it.
    "LimitExceeded.AppDailyLimit", "LimitExceeded.AppMainlandChinaDailyLimit",
})
PERMANENT_CODES = frozenset({
    # The number is wrong: no retry can make it right.
    "InvalidParameterValue.IncorrectPhoneNumber", "FailedOperation.PhoneNumberParseFail",
    # The person unsubscribed or is on the carriers' do-not-disturb list: sending again is pestering.
    "FailedOperation.PhoneNumberInBlacklist",
    # Per-number hourly/daily limits protect the person from floods. Retrying waits hours, and the
    # notice (an appointment, a reminder) would arrive stale: fail visibly so staff can phone instead.
    "LimitExceeded.PhoneNumberOneHourLimit", "LimitExceeded.PhoneNumberDailyLimit",
    # The same text already reached this number today: the person has it.
    "LimitExceeded.PhoneNumberSameContentDailyLimit",
    # The template, its parameters or the sign do not pass review: this message as built never
    # will. Fixing it means a new template or sign, i.e. a new message.
    "FailedOperation.TemplateIncorrectOrUnapproved", "FailedOperation.TemplateUnapprovedOrNotExist",
    "FailedOperation.TemplateIdNotExist", "FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
    "FailedOperation.SignatureIncorrectOrUnapproved", "FailedOperation.ContainSensitiveWord",
    "InvalidParameter.DirtyWordFound", "InvalidParameterValue.TemplateParameterFormatError",
    "InvalidParameterValue.TemplateParameterLengthLimit", "InvalidParameterValue.ContentLengthLimit",
    "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter",
})
# Neither flag: nothing is wrong with the message, the account or its configuration is (keys, app id,
# balance, IP allow-list, clock). Like a WeChat AppSecret error: retried a bounded number of times,
# surfaced to the operator.
CONFIGURATION_CODES = frozenset({
    "InvalidParameterValue.SdkAppIdNotExist", "FailedOperation.InsufficientBalanceInSmsPackage",
    "InternalError.RequestTimeException", "UnsupportedRegion", "InvalidCredential", "ClientError",
    "ClientParamsError", "ClientSideError",
})
_CONFIGURATION_PREFIXES = ("AuthFailure", "UnauthorizedOperation")
_RETRYABLE_PREFIXES = ("InternalError", "RequestLimitExceeded")
_PERMANENT_PREFIXES = ("InvalidParameter", "MissingParameter", "FailedOperation", "UnsupportedOperation")


def delivery_error(code: str, message: str) -> DeliveryError:
    """The DeliveryError for a Tencent Cloud error code (a Response.Error or a SendStatus Code).

    Codes not listed fall to their family; an unknown family is retryable (the
    outbox's attempt limit still ends it visibly).
    """
    if code in PERMANENT_CODES:
        return DeliveryError(CHANNEL_NAME, f"{code}: {message}", code=code, permanent=True)
    if code in CONFIGURATION_CODES or code.startswith(_CONFIGURATION_PREFIXES):
        return DeliveryError(CHANNEL_NAME, f"{code}: {message} (configuration)", code=code)
    if code in RETRYABLE_CODES or code.startswith(_RETRYABLE_PREFIXES):
        return DeliveryError(CHANNEL_NAME, f"{code}: {message}", code=code, retryable=True)
    if code.startswith(_PERMANENT_PREFIXES):
        return DeliveryError(CHANNEL_NAME, f"{code}: {message}", code=code, permanent=True)
    return DeliveryError(CHANNEL_NAME, f"{code}: {message}", code=code, retryable=True)


def mainland_e164(phone: str) -> str | None:
    """``phone`` as +86XXXXXXXXXXX if it is a mainland mobile number (spaces and dashes ignored), else None."""
    match = _MAINLAND_MOBILE.fullmatch(re.sub(r"[\s-]", "", phone))
    return f"+86{match.group(1)}" if match else None


def masked(phone: str) -> str:
    """A number as logs and errors show it: enough to tell numbers apart, not to call one."""
    return phone[:-8] + "****" + phone[-4:] if len(phone) > 8 else "****"


def session_context_for(dedupe_key: str) -> str:
    """The SessionContext for a dedupe key: the key itself, or its SHA-256 when 512 bytes or more."""
    if len(dedupe_key.encode("utf-8")) <= MAX_SESSION_CONTEXT_BYTES:
        return dedupe_key
    return "sha256:" + hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()


class SmsChannel:
    """The Tencent Cloud SMS account: sends templated notices to mainland mobiles.

    ``endpoint_url`` is ``http(s)://host[:port]`` (an emulator on loopback in tests);
    ``templates_by_kind`` maps a notice kind (lower case) to its template id.
    """

    name = CHANNEL_NAME

    def __init__(self, *, sdk_app_id: str, secret_id: str, secret_key: str, sign_name: str,
                 region: str, endpoint_url: str = DEFAULT_ENDPOINT_URL,
                 templates_by_kind: Mapping[str, str] | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 max_param_chars: int = DEFAULT_MAX_PARAM_CHARS) -> None:
        endpoint = urlsplit(endpoint_url or DEFAULT_ENDPOINT_URL)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise ValueError(f"SMS endpoint must be http(s)://host[:port], not {endpoint_url!r}")
        if timeout_seconds <= 0 or max_param_chars < 1:
            raise ValueError("timeout_seconds must be more than 0 and max_param_chars at least 1")
        self._protocol, self._host = endpoint.scheme, endpoint.netloc
        self._sdk_app_id, self._secret_id, self._secret_key = sdk_app_id, secret_id, secret_key
        self.sign_name = sign_name
        self._region = region
        self._templates = {kind.lower(): template for kind, template in (templates_by_kind or {}).items()}
        self.timeout_seconds = timeout_seconds
        self.max_param_chars = max_param_chars

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> SmsChannel:
        """The channel for the configured account. Raises ValueError when SMS is not configured."""
        if not settings.sms_enabled:
            raise ValueError("SMS is off: set SMS_SDK_APP_ID, SMS_SECRET_ID, SMS_SECRET_KEY and SMS_SIGN_NAME")
        return cls(sdk_app_id=settings.SMS_SDK_APP_ID, secret_id=settings.SMS_SECRET_ID,
                   secret_key=settings.SMS_SECRET_KEY, sign_name=settings.SMS_SIGN_NAME,
                   region=settings.SMS_REGION, endpoint_url=settings.SMS_ENDPOINT_URL,
                   templates_by_kind=settings.sms_templates, timeout_seconds=timeout_seconds,
                   max_param_chars=settings.SMS_PARAM_MAX_CHARS)

    def for_kind(self, kind: str) -> SmsTemplateChannel | None:
        """A Channel sending notices of ``kind``, or None when no SMS template is configured for it."""
        template_id = self._templates.get(kind.lower())
        return self.for_template(template_id) if template_id else None

    def for_template(self, template_id: str, *, param_count: int | None = None) -> SmsTemplateChannel:
        """A Channel sending template ``template_id`` (with ``param_count`` parameters, when known)."""
        return SmsTemplateChannel(self, template_id, param_count)

    def send_notice(self, phone: str, template_id: str, params: Sequence[str], *, session_context: str,
                    param_count: int | None = None) -> str:
        """Send template ``template_id`` with ``params`` to ``phone``; returns Tencent's SerialNo.

        Raises DeliveryError: permanent for a refused number, parameters or template (refusals made
        before sending carry the code Tencent would have answered), retryable for network problems,
        timeouts and the platform's transient errors, neither flag for configuration problems.
        """
        number = mainland_e164(phone)
        if number is None:
            raise _refused("InvalidParameterValue.IncorrectPhoneNumber", f"not a mainland mobile: {masked(phone)}")
        values = [str(value) for value in params]
        self._check_params(values, param_count)
        if len(session_context.encode("utf-8")) > MAX_SESSION_CONTEXT_BYTES:
            raise _refused("InvalidParameter", f"SessionContext over {MAX_SESSION_CONTEXT_BYTES} bytes")
        request = SendSmsRequest()
        request.PhoneNumberSet = [number]
        request.SmsSdkAppId = self._sdk_app_id
        request.SignName = self.sign_name
        request.TemplateId = template_id
        request.TemplateParamSet = values
        request.SessionContext = session_context
        try:
            response = self._client().SendSms(request)
        except TencentCloudSDKException as exc:
            raise _sdk_error(exc) from exc
        statuses = [s for s in (response.SendStatusSet or []) if s.PhoneNumber in (None, number)]
        if not statuses:  # the platform answered without saying what became of the number
            raise DeliveryError(CHANNEL_NAME, f"no send status for {masked(number)} (RequestId "
                                f"{response.RequestId})", retryable=True)
        status = statuses[0]
        if status.Code != "Ok":
            raise delivery_error(str(status.Code), f"{status.Message} ({masked(number)})")
        log.info("SMS %s to %s: SerialNo %s, RequestId %s", template_id, masked(number), status.SerialNo,
                 response.RequestId)
        return str(status.SerialNo)

    def _check_params(self, values: list[str], param_count: int | None) -> None:
        if param_count is not None and len(values) != param_count:
            raise _refused("FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
                           f"{len(values)} parameters for a template of {param_count}")
        for position, value in enumerate(values, start=1):
            if len(value) > self.max_param_chars:
                raise _refused("InvalidParameterValue.TemplateParameterLengthLimit",
                               f"parameter {{{position}}} has {len(value)} characters, at most "
                               f"{self.max_param_chars} are allowed: {value!r}")
            if _LINK.search(value):
                raise _refused("InvalidParameterValue.ProhibitedUseUrlInTemplateParameter",
                               f"parameter {{{position}}} holds a link")
        # The template text is unknown here; sign and parameters alone must leave room for it.
        if len(self.sign_name) + 2 + sum(map(len, values)) > MAX_MESSAGE_CHARS:
            raise _refused("InvalidParameterValue.ContentLengthLimit", f"over {MAX_MESSAGE_CHARS} characters")

    def _client(self) -> SmsClient:
        # A client per call: the SDK keeps a requests.Session in it, which threads should not share.
        profile = ClientProfile(httpProfile=HttpProfile(protocol=self._protocol, endpoint=self._host,
                                                        reqTimeout=self.timeout_seconds))
        return SmsClient(Credential(self._secret_id, self._secret_key), self._region, profile)


@dataclass(frozen=True)
class SmsTemplateChannel:
    """The SMS channel bound to one template: a :class:`~accident_service.notify.channels.Channel`.

    ``send`` delivers ``rendered.sms_params`` (the template's parameters, in
    order) to ``address`` (a mobile number), with the dedupe key as
    SessionContext so a delivery report can be traced to its notification.
    """

    sms: SmsChannel
    template_id: str
    param_count: int | None = None
    name: str = field(default=CHANNEL_NAME, init=False)

    def send(self, address: str, rendered: Rendered, *, dedupe_key: str) -> None:
        """Raises DeliveryError (see :meth:`SmsChannel.send_notice`)."""
        self.sms.send_notice(address, self.template_id, rendered.sms_params,
                             session_context=session_context_for(dedupe_key), param_count=self.param_count)
        return None


def _refused(code: str, message: str) -> DeliveryError:
    return delivery_error(code, f"{message} (refused before sending)")


def _sdk_error(exc: TencentCloudSDKException) -> DeliveryError:
    code, message = str(exc.get_code()), str(exc.get_message())
    if exc.get_request_id():  # the platform answered: one of its codes
        return delivery_error(code, f"{message} (RequestId {exc.get_request_id()})")
    if code in CONFIGURATION_CODES:  # refused by the SDK itself: empty or malformed keys and the like
        return delivery_error(code, message)
    # No answer: connection refused or reset, timeout (ClientNetworkError), an HTTP error status
    # (ServerNetworkError), or a body that is not the API's JSON.
    return DeliveryError(CHANNEL_NAME, f"{code}: {message[:300]}", retryable=True)
