"""Tencent Cloud SMS on loopback: API 3.0 ``SendSms`` (version 2021-01-11), for tests and the dev sandbox.

Built from Tencent's documentation, not from our client: the TC3-HMAC-SHA256 signature
(cloud.tencent.com/document/api/382/52072; tested against its published example), SendSms's
parameters, answers and error codes (document/api/382/55981), the template rules (document/product/
382/39023: {1}{2}… from 1, verification parameters 0-6 digits, no links, 500 characters with the
sign) and the default frequency policy (document/faq/382/13303: one identical text per number per
30 s, 2 SMS per number per calendar day; adjustable here as in the console). Errors answer HTTP 200
with ``Response.Error``; each number's fate is its ``SendStatus`` (``Code`` "Ok" or a per-number code).

    with SmsEmulator("AKIDtest", "secret", "1400000001", sign_names=("交警快处",)) as sms:
        sms.register_template("1234567", "您的案件{1}已预约，{2}在{3}处理")
        settings = {"SMS_ENDPOINT_URL": sms.endpoint_url, ...}
        ...
        sms.messages_to("13800138000")  # ["【交警快处】您的案件…"]
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from zoneinfo import ZoneInfo

from accident_service.sandbox.http_server import LoopbackServing

ACTION, VERSION, SERVICE = "SendSms", "2021-01-11", "sms"
REGIONS = ("ap-beijing", "ap-guangzhou", "ap-nanjing")  # the regions SMS serves
MAX_CLOCK_SKEW_SECONDS = 300
MAX_PHONES, MAX_MESSAGE_CHARS, MAX_SESSION_CONTEXT_BYTES = 200, 500, 512
SINGLE_SMS_CHARS, LONG_SMS_PART_CHARS = 70, 67  # billing: one SMS up to 70 characters, else 67 a part
MAX_REQUEST_BYTES = 1024 * 1024
# Codes that SendSms answers in a number's SendStatus rather than as the request's Error.
PER_NUMBER_CODES = frozenset({
    "InvalidParameterValue.IncorrectPhoneNumber", "FailedOperation.PhoneNumberParseFail",
    "FailedOperation.PhoneNumberInBlacklist", "LimitExceeded.PhoneNumberThirtySecondLimit",
    "LimitExceeded.PhoneNumberOneHourLimit", "LimitExceeded.PhoneNumberDailyLimit",
    "LimitExceeded.PhoneNumberSameContentDailyLimit",
})
_AUTHORIZATION = re.compile(r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/([a-z]+)/tc3_request, "
                            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")
_PLACEHOLDER = re.compile(r"\{(\d+)\}")
_PHONE = re.compile(r"(?:\+86|0086|86)?(1[3-9]\d{9})")
_LINK = re.compile(r"(?i)://|www\.|\b[a-z0-9-]+\.(?:com|cn|net|org|top|io)\b")
_CHINA = ZoneInfo("Asia/Shanghai")


class ApiError(Exception):
    """A Response.Error: ``args`` are (code, message)."""


def tc3_signature(secret_key: str, *, method: str, uri: str, query: str, headers: Mapping[str, str],
                  signed_headers: Sequence[str], payload: bytes, timestamp: int, service: str) -> str:
    """TC3-HMAC-SHA256 as Tencent documents it; ``headers`` by lower-case name."""
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip().lower()}\n" for name in signed_headers)
    canonical_request = "\n".join([method, uri, query, canonical_headers, ";".join(signed_headers),
                                   hashlib.sha256(payload).hexdigest()])
    day = _utc_day(timestamp)
    string_to_sign = "\n".join(["TC3-HMAC-SHA256", str(timestamp), f"{day}/{service}/tc3_request",
                                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
    key = ("TC3" + secret_key).encode("utf-8")
    for part in (day, service, "tc3_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Template:
    text: str
    param_count: int
    verification: bool


@dataclass(frozen=True)
class SentSms:
    phone: str  # +86XXXXXXXXXXX
    text: str  # as the phone shows it: 【sign】 and the filled template
    serial_no: str
    session_context: str
    at: float


class SmsEmulator(LoopbackServing):
    """Loopback HTTP server playing Tencent Cloud SMS. Start/stop it, or use it as a context manager.

    ``max_param_chars``: each parameter's limit (the console's figure: 6 for new accounts);
    ``same_text_seconds`` / ``daily_limit_per_number``: the frequency policy (None turns a rule off);
    ``clock``: the server's time in UNIX seconds (signature expiry, calendar days).
    """

    _thread_name = "sms-emulator"

    def __init__(self, secret_id: str, secret_key: str, sdk_app_id: str, *, sign_names: Iterable[str] = ("交警快处",),
                 max_param_chars: int = 6, same_text_seconds: float | None = 30,
                 daily_limit_per_number: int | None = 2, clock: Callable[[], float] = time.time,
                 port: int = 0) -> None:
        self.secret_id, self.secret_key, self.sdk_app_id = secret_id, secret_key, sdk_app_id
        self.sign_names = set(sign_names)
        self.max_param_chars = max_param_chars
        self.same_text_seconds, self.daily_limit_per_number = same_text_seconds, daily_limit_per_number
        self.clock = clock
        self.templates: dict[str, Template] = {}
        self.sent: list[SentSms] = []
        self.request_count = 0
        # What the next requests meet, by kind: "delay" (seconds), "http" (a status), "error" (a code).
        self._faults: dict[str, deque[Any]] = {"delay": deque(), "http": deque(), "error": deque()}
        self._serials = itertools.count(1)
        self._lock = threading.Lock()
        self._init_serving(port)

    def register_template(self, template_id: str, text: str, *, verification: bool = False) -> None:
        """An approved template; its parameters are {1}, {2}… numbered from 1 without gaps."""
        numbers = sorted({int(n) for n in _PLACEHOLDER.findall(text)})
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"placeholders must be {{1}}..{{n}} without gaps, got {numbers}")
        with self._lock:
            self.templates[template_id] = Template(text, len(numbers), verification)

    def inject_error(self, code: str, times: int = 1) -> None:
        """The next ``times`` signed requests fail with ``code`` (per number for PER_NUMBER_CODES)."""
        self._queue("error", code, times)

    def inject_http_status(self, status: int, times: int = 1) -> None:
        """The next ``times`` requests get a bare HTTP ``status`` (a gateway failing in front of the API)."""
        self._queue("http", status, times)

    def delay(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests are answered (and handled) only after ``seconds``."""
        self._queue("delay", seconds, times)

    def messages_to(self, phone: str) -> list[str]:
        """The texts ``phone`` received, oldest first, as shown on the phone (sign included)."""
        return [sms.text for sms in self.sent_to(phone)]

    def sent_to(self, phone: str) -> list[SentSms]:
        """What ``phone`` (11 digits or +86...) received, oldest first."""
        number = _e164(phone) or phone
        with self._lock:
            return [sms for sms in self.sent if sms.phone == number]

    def _queue(self, kind: str, value: Any, times: int) -> None:
        with self._lock:
            self._faults[kind].extend([value] * times)

    def _take_fault(self, kind: str) -> Any:
        with self._lock:
            return self._faults[kind].popleft() if self._faults[kind] else None

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """One API call: the JSON ``Response`` object (an answer or an Error, RequestId always)."""
        request_id = str(uuid.uuid4())
        try:
            self._verify_signature(method, path, headers, body)
            self._check_common(headers)
            fault = self._take_fault("error")
            if fault is not None and fault not in PER_NUMBER_CODES:
                raise ApiError(fault, "injected fault")
            answer = self._send_sms(_send_sms_request(body), fault)
        except ApiError as exc:
            return {"Error": {"Code": exc.args[0], "Message": exc.args[1]}, "RequestId": request_id}
        return {**answer, "RequestId": request_id}

    def _verify_signature(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        match = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
        signed = match.group(4).split(";") if match else []
        if not match or "content-type" not in signed or "host" not in signed or signed != sorted(signed):
            raise ApiError("AuthFailure.InvalidAuthorization", "Authorization is not TC3-HMAC-SHA256")
        secret_id, scope_day, service, _, signature = match.groups()
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            raise ApiError("MissingParameter", "X-TC-Timestamp is missing or not a number") from None
        if abs(self.clock() - timestamp) > MAX_CLOCK_SKEW_SECONDS:
            raise ApiError("AuthFailure.SignatureExpire", "X-TC-Timestamp is more than 5 minutes off")
        if secret_id != self.secret_id:
            raise ApiError("AuthFailure.SecretIdNotFound", "the SecretId does not exist")
        expected = tc3_signature(self.secret_key, method=method, uri=path.split("?")[0],
                                 query=path.partition("?")[2], headers=headers, signed_headers=signed,
                                 payload=body, timestamp=timestamp, service=SERVICE)
        scope_ok = service == SERVICE and scope_day == _utc_day(timestamp)
        if not (scope_ok and hmac.compare_digest(expected, signature)):
            raise ApiError("AuthFailure.SignatureFailure", "the signature does not match")

    def _check_common(self, headers: Mapping[str, str]) -> None:
        if headers.get("x-tc-action") != ACTION:
            raise ApiError("InvalidAction", f"only {ACTION} is served here")
        if headers.get("x-tc-version") != VERSION:
            raise ApiError("NoSuchVersion", f"only version {VERSION} is served here")
        if not headers.get("x-tc-region"):
            raise ApiError("MissingParameter", "X-TC-Region is required")
        if headers["x-tc-region"] not in REGIONS:
            raise ApiError("UnsupportedRegion", f"SMS is not served in {headers['x-tc-region']}")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError("InvalidParameter", "the emulator reads POST application/json only")

    def _send_sms(self, request: dict[str, Any], injected: str | None) -> dict[str, Any]:
        phones, params = request["PhoneNumberSet"], request["TemplateParamSet"]
        if not phones:
            raise ApiError("MissingParameter.EmptyPhoneNumberSet", "PhoneNumberSet is empty")
        if len(phones) > MAX_PHONES:
            raise ApiError("LimitExceeded.PhoneNumberCountLimit", f"more than {MAX_PHONES} numbers")
        if str(request.get("SmsSdkAppId") or "") != self.sdk_app_id:
            raise ApiError("InvalidParameterValue.SdkAppIdNotExist", "SmsSdkAppId does not exist")
        sign, session = str(request.get("SignName") or ""), str(request.get("SessionContext") or "")
        if sign not in self.sign_names:
            raise ApiError("FailedOperation.SignatureIncorrectOrUnapproved", f"sign {sign!r} is not approved")
        with self._lock:
            template = self.templates.get(str(request.get("TemplateId") or ""))
        if template is None:
            raise ApiError("FailedOperation.TemplateIncorrectOrUnapproved", "the template is not approved")
        if len(params) != template.param_count:
            raise ApiError("FailedOperation.TemplateParamSetNotMatchApprovedTemplate",
                           f"{len(params)} parameters for a template of {template.param_count}")
        for value in params:
            if template.verification and not re.fullmatch(r"\d{0,6}", value):
                raise ApiError("InvalidParameterValue.TemplateParameterFormatError", "0-6 digits only")
            if len(value) > self.max_param_chars:
                raise ApiError("InvalidParameterValue.TemplateParameterLengthLimit",
                               f"a parameter has more than {self.max_param_chars} characters")
            if _LINK.search(value):
                raise ApiError("InvalidParameterValue.ProhibitedUseUrlInTemplateParameter", "no links")
        text = f"【{sign}】" + _PLACEHOLDER.sub(lambda m: params[int(m.group(1)) - 1], template.text)
        if len(text) > MAX_MESSAGE_CHARS:
            raise ApiError("InvalidParameterValue.ContentLengthLimit", f"over {MAX_MESSAGE_CHARS} characters")
        if len(session.encode("utf-8")) >= MAX_SESSION_CONTEXT_BYTES:
            raise ApiError("InvalidParameter.InvalidParameters", "SessionContext must be under 512 bytes")
        return {"SendStatusSet": [self._deliver(raw, text, session, injected) for raw in phones]}

    def _deliver(self, raw: str, text: str, session: str, injected: str | None) -> dict[str, Any]:
        number, now, serial = _e164(raw), self.clock(), ""
        with self._lock:
            code = injected or self._refusal(number, text, now)
            if code is None and number is not None:
                serial = f"2433:{int(now * 1000)}{next(self._serials):010d}"
                self.sent.append(SentSms(number, text, serial, session, now))
        fee = 1 if len(text) <= SINGLE_SMS_CHARS else -(-len(text) // LONG_SMS_PART_CHARS)
        return {"SerialNo": serial, "PhoneNumber": number or raw,
                "Fee": fee if code is None else 0, "SessionContext": session, "Code": code or "Ok",
                "Message": "send success" if code is None else code, "IsoCode": "CN" if number else "DEF"}

    def _refusal(self, number: str | None, text: str, now: float) -> str | None:
        if number is None:
            return "InvalidParameterValue.IncorrectPhoneNumber"
        earlier = [sms for sms in self.sent if sms.phone == number]
        if self.same_text_seconds is not None and any(
                sms.text == text and now - sms.at < self.same_text_seconds for sms in earlier):
            return "LimitExceeded.PhoneNumberThirtySecondLimit"
        today = [sms for sms in earlier if _china_date(sms.at) == _china_date(now)]
        if self.daily_limit_per_number is not None and len(today) >= self.daily_limit_per_number:
            return "LimitExceeded.PhoneNumberDailyLimit"
        return None

    def _handler(self):
        return _handler_for(self)

    @property
    def endpoint(self) -> str:
        """host:port, as the SDK's HttpProfile(protocol="http", endpoint=...) takes it."""
        return f"127.0.0.1:{self._bound_port('SMS emulator')}"

    @property
    def endpoint_url(self) -> str:
        """What SMS_ENDPOINT_URL should be set to."""
        return f"http://{self.endpoint}"


def _utc_day(timestamp: int) -> str:  # the credential scope's date: UTC, whatever the local zone
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def _china_date(moment: float) -> date:  # the calendar day as the daily limit counts it
    return datetime.fromtimestamp(moment, _CHINA).date()


def _e164(phone: str) -> str | None:
    match = _PHONE.fullmatch(phone.strip())
    return f"+86{match.group(1)}" if match else None


def _send_sms_request(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        request = None
    if not isinstance(request, dict):
        raise ApiError("FailedOperation.JsonParseFail", "the body is not a JSON object")
    for name in ("PhoneNumberSet", "TemplateParamSet"):
        request[name] = request.get(name) or []
        if not isinstance(request[name], list) or not all(isinstance(item, str) for item in request[name]):
            raise ApiError("InvalidParameter", f"{name} must be an array of strings")
    return request


def _handler_for(emulator: SmsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "SmsEmulator/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # API 3.0 also takes GET with a query string; we serve POST JSON
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_REQUEST_BYTES)) if length > 0 else b""
            with emulator._lock:
                emulator.request_count += 1
            delay, status = emulator._take_fault("delay"), emulator._take_fault("http")
            if delay is not None and emulator._stopping.wait(delay):
                return
            if status is not None:
                content_type, payload = "text/html", b"<html>502 Bad Gateway</html>"
            else:
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = emulator.handle("POST", self.path, headers, body)
                # Exactly "application/json": the SDK reads Response.Error only under that content type.
                content_type, payload = "application/json", json.dumps({"Response": answer}).encode("utf-8")
            try:
                self.send_response(status or 200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout under test)

    return Handler
