"""Logging setup; personal data (openids, phones, plates) never reaches a log line."""

from __future__ import annotations

import logging
import re

_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
_PLATE = re.compile(r"([\u4e00-\u9fff][A-Z])[A-Z0-9]{3,4}([A-Z0-9学警挂港澳]{1,2})")
_OPENID = re.compile(r"\b(o[A-Za-z0-9_-]{3})[A-Za-z0-9_-]{20,}\b")


def mask_personal_data(text: str) -> str:
    """Mask mobile numbers, plates and openids, keeping enough to correlate lines."""
    text = _PHONE.sub(r"\1****\2", text)
    text = _PLATE.sub(r"\1***\2", text)
    return _OPENID.sub(r"\1***", text)


class PersonalDataFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_personal_data(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, PersonalDataFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler.addFilter(PersonalDataFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # Two lines per job run every few seconds drown the service's own lines.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # Alembic narrates every plugin it loads; an upgrade is reported by the command itself.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
