"""The value rules of template-message keywords (WECHAT.md §5 "Template", rules since 2023-05-04).

Every keyword value: at most 20 characters and no line break. Category
templates also type each keyword by the prefix of its name (``thing2``,
``time4``...); the types and their limits are the documentation's table
"类目模板消息参数值内容限制说明" (模板消息接口):

=================  ==========================================================
thing              up to 20 characters of any kind
number             up to 32 digits, may have decimals
letter             up to 32 letters
symbol             up to 5 symbols
character_string   up to 32 digits, letters or symbols (no Chinese)
time               24-hour time, optionally after a date; a range joins two
                   points with "~" (15:01, 2019年10月1日 15:01, 2023-08-09 08:00~08:30)
date               a date, optionally with a 24-hour time; ranges with "~"
amount             one optional currency sign + up to 10 digits, decimals, optional trailing 元
phone_number       up to 17 digits or symbols
car_number         up to 8: letters/digits, the first and last may be Chinese
name               up to 10 Chinese characters, or up to 20 letters/symbols
phrase             up to 5 Chinese characters
const              only values approved with the template (or empty)
=================  ==========================================================

``keyword`` stands for the untyped fields of older industry templates
(``keyword1``...): only the 20-character / no-line-break rule applies.
Since every value is also held to 20 characters, character_string and number
are in effect 20 long too (the stricter reading; the platform's own count of
"characters" is not documented precisely).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import date

KEYWORD_MAX_CHARS = 20
FIELD_TYPES = ("thing", "number", "letter", "symbol", "character_string", "time", "date", "amount",
               "phone_number", "car_number", "name", "phrase", "const", "keyword")
EMPTY_ALLOWED = frozenset({"const", "keyword"})  # const: "审核通过的字符串和空串"

_CJK = "\u4e00-\u9fff"
_CLOCK = r"(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?"
_DATE = r"(?P<y>\d{4})(?:[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})|年(?P<m2>\d{1,2})月(?P<d2>\d{1,2})日)"
_TIME_POINT = re.compile(rf"(?:{_DATE}\s*)?{_CLOCK}")
_DATE_POINT = re.compile(rf"{_DATE}(?:\s*{_CLOCK})?")


def _is_symbol(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _real_date(match: re.Match[str]) -> bool:
    if match.group("y") is None:
        return True
    month, day = match.group("m") or match.group("m2"), match.group("d") or match.group("d2")
    try:
        date(int(match.group("y")), int(month), int(day))
    except ValueError:
        return False
    return True


def _moments(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        points = [part.strip() for part in value.split("~")]
        if len(points) > 2:
            return False
        for point in points:
            match = pattern.fullmatch(point)
            if match is None or not _real_date(match):
                return False
        return True

    return check


def _name(value: str) -> bool:
    if any(ch.isdigit() for ch in value):
        return False
    if any(_is_cjk(ch) for ch in value):  # mixed Chinese and letters counts as a Chinese name
        return len(value) <= 10 and all(_is_cjk(ch) or ch.isascii() and ch.isalpha() for ch in value)
    return len(value) <= 20 and all(ch.isascii() and (ch.isalpha() or _is_symbol(ch)) for ch in value)


_RULES: dict[str, Callable[[str], bool]] = {
    "thing": lambda v: len(v) <= 20,
    "number": lambda v: len(v) <= 32 and re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", v) is not None,
    "letter": lambda v: re.fullmatch(r"[A-Za-z]{1,32}", v) is not None,
    "symbol": lambda v: len(v) <= 5 and all(_is_symbol(ch) and not ch.isspace() for ch in v),
    "character_string": lambda v: re.fullmatch(r"[!-~]{1,32}", v) is not None,
    "time": _moments(_TIME_POINT),
    "date": _moments(_DATE_POINT),
    "amount": lambda v: re.fullmatch(r"[¥￥$€£]?[0-9]{1,10}(?:\.[0-9]+)?元?", v) is not None,
    "phone_number": lambda v: len(v) <= 17 and all(ch.isascii() and (ch.isdigit() or _is_symbol(ch)) for ch in v),
    "car_number": lambda v: len(v) <= 8 and re.fullmatch(rf"[{_CJK}]?[A-Za-z0-9]+[{_CJK}]?", v) is not None,
    "name": _name,
    "phrase": lambda v: re.fullmatch(rf"[{_CJK}]{{1,5}}", v) is not None,
    "keyword": lambda v: True,
}


def field_type_of(name: str) -> str | None:
    """The type a keyword's name implies: ``thing2`` → thing, ``keyword1`` → keyword, ``case_no`` → None."""
    match = re.fullmatch(r"([a-z_]+?)\d+", name)
    return match.group(1) if match and match.group(1) in FIELD_TYPES else None


def value_problem(field_type: str, value: object, approved: frozenset[str] = frozenset()) -> str | None:
    """Why ``value`` cannot fill a ``field_type`` keyword: "is empty", "invalid", or None when it can.

    The words are the platform's 47003 errmsg endings ("argument invalid! data.time3.value is empty").
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "is empty"  # a missing {"value": ...} reads as empty on the platform
    text = str(value)
    if text == "":
        return None if field_type in EMPTY_ALLOWED else "is empty"
    if len(text) > KEYWORD_MAX_CHARS or "\n" in text or "\r" in text:
        return "invalid"
    if field_type == "const":
        return None if text in approved else "invalid"
    return None if _RULES[field_type](text) else "invalid"
