"""The XML the platform pushes, and how it signs and encrypts it.

Field names and order follow the official documentation (接收普通消息,
接收事件推送, 消息加解密说明). Signatures are computed here independently of
wechatpy so tests that verify them with wechatpy check two implementations
against each other.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

import xmltodict
from wechatpy.crypto import WeChatCrypto

FieldValue = str | int | float


def cdata(value: str) -> str:
    # "]]>" cannot appear inside CDATA: split it across two sections.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_xml(fields: Mapping[str, FieldValue]) -> str:
    """``<xml>`` with numbers bare and strings in CDATA, as the platform writes them."""
    parts = ["<xml>"]
    for name, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"<{name}>{value}</{name}>")
        else:
            parts.append(f"<{name}>{cdata(str(value))}</{name}>")
    parts.append("</xml>")
    return "".join(parts)


def message_fields(to_user: str, from_user: str, create_time: int, msg_type: str,
                   body: Mapping[str, FieldValue], msg_id: int | None) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {"ToUserName": to_user, "FromUserName": from_user,
                                     "CreateTime": int(create_time), "MsgType": msg_type}
    fields.update(body)
    if msg_id is not None:
        fields["MsgId"] = int(msg_id)
    return fields


def sha1_signature(*parts: str) -> str:
    """SHA1 of the sorted, concatenated parts (``signature`` and ``msg_signature``)."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def new_nonce() -> str:
    return str(random.SystemRandom().randrange(10**8, 10**10))


class Envelope:
    """Safe-mode encryption of pushes, and decryption of the service's replies."""

    def __init__(self, token: str, encoding_aes_key: str, appid: str) -> None:
        self._crypto = WeChatCrypto(token, encoding_aes_key, appid)
        self._token = token

    def encrypt(self, xml: str | bytes, nonce: str, timestamp: str) -> str:
        """The base64 ``Encrypt`` value for ``xml`` (bytes are encrypted as they are, even if malformed)."""
        wrapped = self._crypto.encrypt_message(xml, nonce, timestamp)
        return xmltodict.parse(wrapped)["xml"]["Encrypt"]

    def safe_body(self, to_user: str, encrypt: str) -> str:
        return render_xml({"ToUserName": to_user, "Encrypt": encrypt})

    def msg_signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return sha1_signature(self._token, timestamp, nonce, encrypt)

    def decrypt_reply(self, reply_xml: str) -> str:
        """Check the reply's MsgSignature and decrypt it. Raises wechatpy's exceptions or KeyError."""
        envelope = xmltodict.parse(reply_xml)["xml"]
        return self._crypto.decrypt_message(reply_xml, envelope["MsgSignature"], envelope["TimeStamp"],
                                            envelope["Nonce"])


def read_reply(text: str, envelope: Envelope | None, openid: str | None) -> dict:
    """The fields of the service's in-band reply (decrypted with ``envelope`` for an encrypted push).

    Raises (ValueError, wechatpy's exceptions, expat errors, KeyError) for a reply the platform
    could not show: the user then sees "该公众号暂时无法提供服务".
    """
    if envelope is not None:
        if "<Encrypt>" not in text:
            raise ValueError("plain reply to an encrypted push")
        text = envelope.decrypt_reply(text)
    reply = xmltodict.parse(text)["xml"]
    if openid is not None and reply.get("ToUserName") != openid:
        raise ValueError(f"reply addressed to {reply.get('ToUserName')!r}, not {openid!r}")
    return reply


@dataclass(frozen=True)
class PushedAction:
    """The user action a pushed message stands for (see allowances)."""

    openid: str
    msg_type: str  # "text", "image"... or "event"
    event: str | None
    key: tuple[str, ...]  # what a platform retry of the same push repeats: MsgId, or CreateTime + Event


def action_of(xml: bytes) -> PushedAction | None:
    """The action in a push's plaintext XML; None when it is not a well-formed message.

    Well-formed: parses (entities refused), has FromUserName and MsgType, and an
    Event when MsgType is event.
    """
    try:
        fields = xmltodict.parse(xml, disable_entities=True).get("xml")
    except Exception:  # expat errors, entity refusals, bad encodings: not a message the platform would push
        return None
    if not isinstance(fields, dict):
        return None
    openid, msg_type, event = fields.get("FromUserName"), fields.get("MsgType"), fields.get("Event")
    if not isinstance(openid, str) or not openid or not isinstance(msg_type, str):
        return None
    if msg_type.lower() == "event":
        if not isinstance(event, str) or not event:
            return None
        return PushedAction(openid, "event", event, ("event", openid, str(fields.get("CreateTime")), event))
    msg_id = fields.get("MsgId")
    key = ("msg", openid, str(msg_id)) if msg_id else ("msg", openid, str(fields.get("CreateTime")), msg_type)
    return PushedAction(openid, msg_type.lower(), None, key)
