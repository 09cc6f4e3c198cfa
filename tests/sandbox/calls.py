"""The emulator's API spoken to with plain requests (not our client), as the sandbox tests do."""

from __future__ import annotations

from typing import Any

import requests

from accident_service.sandbox.emulator import WeChatEmulator


def get_token(emulator: WeChatEmulator, secret: str | None = None) -> dict:
    return requests.get(emulator.api_base_url + "token", timeout=5, params={
        "grant_type": "client_credential", "appid": emulator.appid, "secret": secret or emulator.secret}).json()


def stable_token(emulator: WeChatEmulator, force_refresh: Any = None, **overrides: Any) -> dict:
    body = {"grant_type": "client_credential", "appid": emulator.appid, "secret": emulator.secret, **overrides}
    if force_refresh is not None:
        body["force_refresh"] = force_refresh
    return requests.post(emulator.api_base_url + "stable_token", json=body, timeout=5).json()


def send_text(emulator: WeChatEmulator, token: str, openid: str = "o-user", text: str = "hi") -> dict:
    body = {"touser": openid, "msgtype": "text", "text": {"content": text}}
    return requests.post(emulator.api_base_url + "message/custom/send", params={"access_token": token},
                         json=body, timeout=5).json()


def send_template(emulator: WeChatEmulator, token: str, openid: str, template_id: str, data: dict,
                  **extra: Any) -> dict:
    body = {"touser": openid, "template_id": template_id,
            "data": {key: value if isinstance(value, dict) else {"value": value} for key, value in data.items()},
            **extra}
    return requests.post(emulator.api_base_url + "message/template/send", params={"access_token": token},
                         json=body, timeout=5).json()


def token_works(emulator: WeChatEmulator, token: str) -> int:
    """The errcode an API call with ``token`` gets (0: the token works). Uses menu/create: no user rules."""
    menu = {"button": [{"type": "click", "name": "事故报案", "key": "REPORT_ACCIDENT"}]}
    return requests.post(emulator.api_base_url + "menu/create", params={"access_token": token}, json=menu,
                         timeout=5).json()["errcode"]
