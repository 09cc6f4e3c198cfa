"""The desk's language: Chinese by default, English when the officer switches (kept in a cookie).

A cookie, not the session: the choice outlives a sign-out or an idle expiry,
so the sign-in page greets the officer in the language they read.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import g, request

from accident_service import messages

LANGUAGE_COOKIE = "desk_lang"
HTML_LANG = {"zh": "zh-CN", "en": "en"}


def current_language() -> str:
    if "desk_language" not in g:  # asked for by every text of a page: read the cookie once
        g.desk_language = messages.normalise_language(request.cookies.get(LANGUAGE_COOKIE))
    return g.desk_language


def t(key: str, /, **params: object) -> str:
    """The catalogue text ``key`` in the officer's language (KeyError for a typo: tests render every page)."""
    return messages.text(key, current_language(), **params)


def local_time(moment: datetime | None, timezone: str, pattern: str = "%H:%M") -> str:
    """A UTC instant in a station's wall time ("-" for none)."""
    return moment.astimezone(ZoneInfo(timezone)).strftime(pattern) if moment is not None else "-"
