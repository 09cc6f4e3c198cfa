"""What a driver reads in WeChat, whether it came as a text or as a template card."""

from __future__ import annotations

from typing import Any

HIDDEN = ("first", "remark")  # sent by old code, no longer shown by the platform


def shown(record: dict[str, Any]) -> str:
    """A sent record as the driver reads it: a text, or a card's keyword values one per line."""
    if record["kind"] == "template":
        data = record["body"]["data"]
        return "\n".join(str(value.get("value", "")) for key, value in data.items() if key not in HIDDEN)
    return record["text"] or ""


def read_by(wechat, openid: str) -> list[str]:
    """Everything ``openid`` received, in order, as they read it."""
    with wechat._lock:
        records = [record for record in wechat.sent if record["touser"] == openid and record["kind"] != "reply"]
    return [shown(record) for record in records]
