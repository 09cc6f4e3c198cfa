"""The SMS emulator on loopback, a channel pointed at it, and a raw signed client for the emulator's own tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from accident_service.notify.sms import SmsChannel
from accident_service.sandbox import console
from accident_service.sandbox.sms_emulator import ACTION, SERVICE, VERSION, SmsEmulator, tc3_signature
from accident_service.settings import Settings, load_settings

SECRET_ID = "AKIDsmsEmulatorTest0001"
SECRET_KEY = "sms-emulator-secret-key"
SDK_APP_ID = "1400000001"
SIGN_NAME = "交警快处"
REGION = "ap-guangzhou"
BOOKED_TEMPLATE = "1234567"
BOOKED_TEXT = "您的案件{1}已预约，{2}在{3}处理"
CODE_TEMPLATE = "7654321"  # a verification template: its parameter is 0-6 digits
CODE_TEXT = "您的验证码为{1}，5分钟内有效"


@contextmanager
def running_sms_emulator(**options: Any) -> Iterator[SmsEmulator]:
    """An emulator for the test account, with the booked-notice and verification templates registered."""
    with SmsEmulator(SECRET_ID, SECRET_KEY, SDK_APP_ID, sign_names=(SIGN_NAME,), **options) as sms:
        sms.register_template(BOOKED_TEMPLATE, BOOKED_TEXT)
        sms.register_template(CODE_TEMPLATE, CODE_TEXT, verification=True)
        yield sms


def channel_for(sms: SmsEmulator, **options: Any) -> SmsChannel:
    """The real channel (real SDK, real HTTP) pointed at ``sms``; ``options`` override the account."""
    account: dict[str, Any] = {"sdk_app_id": SDK_APP_ID, "secret_id": SECRET_ID, "secret_key": SECRET_KEY,
                               "sign_name": SIGN_NAME, "region": REGION, "endpoint_url": sms.endpoint_url}
    return SmsChannel(**(account | options))


def sms_settings(sms: SmsEmulator, data_dir: Path, **overrides: Any) -> Settings:
    """Real settings for the test account, SMS_TEMPLATE_BOOKED set."""
    return load_settings({"DATA_DIR": str(data_dir), "SMS_SDK_APP_ID": SDK_APP_ID, "SMS_SECRET_ID": SECRET_ID,
                          "SMS_SECRET_KEY": SECRET_KEY, "SMS_SIGN_NAME": SIGN_NAME, "SMS_REGION": REGION,
                          "SMS_ENDPOINT_URL": sms.endpoint_url, "SMS_TEMPLATE_BOOKED": BOOKED_TEMPLATE}
                         | overrides, environ={})


def notice_templates(sms: SmsEmulator) -> dict[str, str]:
    """The notice templates registered as README's "Notices" asks (the sandbox's texts), and the settings
    naming them with the test account: overrides for ``load_settings``."""
    for kind, text in console.SMS_TEMPLATE_TEXTS.items():
        sms.register_template(console.sms_template_id(kind), text)
    return {"SMS_SDK_APP_ID": SDK_APP_ID, "SMS_SECRET_ID": SECRET_ID, "SMS_SECRET_KEY": SECRET_KEY,
            "SMS_SIGN_NAME": SIGN_NAME, "SMS_REGION": REGION, "SMS_ENDPOINT_URL": sms.endpoint_url,
            **{f"SMS_TEMPLATE_{kind.upper()}": console.sms_template_id(kind) for kind in console.SMS_TEMPLATE_TEXTS}}


def send_sms_body(phones: list[str], params: list[str], *, template_id: str = BOOKED_TEMPLATE,
                  **fields: Any) -> dict[str, Any]:
    """A SendSms request body as Tencent documents it."""
    return {"PhoneNumberSet": phones, "SmsSdkAppId": SDK_APP_ID, "SignName": SIGN_NAME, "TemplateId": template_id,
            "TemplateParamSet": params, **fields}


def signed_post(sms: SmsEmulator, body: dict[str, Any] | bytes, *, secret_id: str = SECRET_ID,
                secret_key: str = SECRET_KEY, timestamp: int | None = None, tamper: bytes | None = None,
                **header_overrides: str) -> dict[str, Any]:
    """POST ``body`` signed with TC3-HMAC-SHA256 (``header_overrides``: X_TC_Action="..." and the like).

    ``tamper``: the body actually sent, after signing ``body``. Returns the ``Response`` object.
    """
    payload = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    timestamp = int(sms.clock() if timestamp is None else timestamp)
    headers = {"Content-Type": "application/json", "Host": sms.endpoint, "X-TC-Action": ACTION,
               "X-TC-Version": VERSION, "X-TC-Region": REGION, "X-TC-Timestamp": str(timestamp)}
    signature = tc3_signature(secret_key, method="POST", uri="/", query="",
                              headers={k.lower(): v for k, v in headers.items()},
                              signed_headers=["content-type", "host"], payload=payload, timestamp=timestamp,
                              service=SERVICE)
    day = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    headers["Authorization"] = (f"TC3-HMAC-SHA256 Credential={secret_id}/{day}/{SERVICE}/tc3_request, "
                                f"SignedHeaders=content-type;host, Signature={signature}")
    # After signing: only content-type and host are signed, so the others may be anything (as with the API).
    headers |= {name.replace("_", "-"): value for name, value in header_overrides.items()}
    response = requests.post(sms.endpoint_url + "/", data=tamper if tamper is not None else payload,
                             headers=headers, timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    answer = response.json()["Response"]
    assert answer["RequestId"]
    return answer
