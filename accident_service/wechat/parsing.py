"""Turn what a driver types into an intent (DESIGN.md §5, conversation contract).

Pure functions, no I/O. Drivers type on phone keyboards with Chinese input
methods, so everything goes through :func:`normalise` first: full-width
digits, letters, spaces and punctuation become ASCII (NFKC), and the
comparison of keywords is case-insensitive.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# How plates and mobile numbers are written is described once, in plates_and_phones: the log masks whatever
# these parsers accept from the same description.
from accident_service.plates_and_phones import (
    PHONE,
    PHONE_SEPARATORS,
    PLATE,
    PLATE_SEPARATORS,
    PROVINCES,
    fold,
    separator_runs,
)

_PLATE_SEPARATORS = separator_runs(PLATE_SEPARATORS)
_DASHES_AND_SPACES = separator_runs(PHONE_SEPARATORS)
_JOIN_CODE_RE = re.compile(r"[0-9]{6}")
_CHOICE_RE = re.compile(r"[1-9]")
_RETAKE_RE = re.compile(r"(?:重拍|retake)\s*(?:第\s*)?([0-9]{1,2})?\s*(?:张)?")
# What drivers type around a plate, a phone number or a code ("我的车牌：粤A12345。",
# "手机13800138000", "(+86)138..."): a leading label, brackets round the country
# code, and closing punctuation are dropped before the value is parsed.
# "对方…" (the other party's) is not a label: a driver sets only their own details.
_VALUE_LABEL = re.compile(r"^(?:(?:我的|本人)?"
                          r"(?:车牌号码|车牌号|车牌|手机号码|手机号|手机|电话号码|电话|联系电话|加入码)"
                          r"|(?:my\s+)?(?:plate|car|mobile|phone|number|tel|code)(?:\s+number)?)"
                          r"\s*(?:是|为|is)?\s*[:：]?\s*", re.IGNORECASE)
_VALUE_PUNCTUATION = "。.!！,，;；~～ "
# Punctuation a driver may add around a keyword ("取消!", "help."). Not "?":
# "取消?" is a question, and must not start a cancellation; a question mark is
# dropped only around keywords that change nothing ("状态？", "status?").
_KEYWORD_PUNCTUATION = "。.!！~～ "
_QUESTION_MARKS = "?？"
# Something meant as a plate: a province character and a letter, then up to 8 letters or digits ("粤Z1", a plate
# cut short, is one: the reply then says how a plate is written, where "not understood" said nothing).
_PLATE_ATTEMPT = re.compile(f"[{PROVINCES}][A-Z][A-Z0-9]{{0,8}}")
# Something meant as a phone number: 7 to 15 digits (6 is a join code, 1 a choice, 11 a valid mobile).
_PHONE_ATTEMPT = re.compile(r"\+?[0-9]{7,15}")
_PLATE_LABEL = re.compile(r"^(?:我的|本人)?(?:车牌号码|车牌号|车牌)|^(?:my\s+)?(?:plate|car)\b", re.IGNORECASE)
_PHONE_LABEL = re.compile(r"^(?:我的|本人)?(?:手机号码|手机号|手机|电话号码|电话|联系电话)"
                          r"|^(?:my\s+)?(?:mobile|phone|tel)\b", re.IGNORECASE)


class IntentKind(enum.StrEnum):
    """What a driver's text asks for; the value is stable for logs and storage."""

    REPORT = "report"
    STATUS = "status"
    RESCHEDULE = "reschedule"
    CANCEL = "cancel"
    RETAKE = "retake"
    HELP = "help"
    LANGUAGE = "language"
    WITHDRAW = "withdraw"
    CONFIRM = "confirm"
    CHOICE = "choice"
    JOIN_CODE = "join_code"
    PHONE = "phone"
    PLATE = "plate"
    DETAILS = "details"  # a plate and a phone in one message
    DETAILS_IN_PART = "details_in_part"  # a plate and a phone in one message, one of them unreadable
    BAD_PLATE = "bad_plate"  # meant as a plate, but not one
    BAD_PHONE = "bad_phone"  # meant as a mobile number, but not one
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Intent:
    """A classified driver text.

    ``value`` by kind: RETAKE → photo number ``int`` (``None`` when the driver
    typed only "重拍"/"retake"); LANGUAGE → ``"en"`` or ``"zh"``; CONFIRM →
    what is confirmed, ``"cancel"``, ``"withdraw"`` or ``None`` (whatever was
    asked); CHOICE → ``int`` 1..9; JOIN_CODE → 6-digit ``str``; PHONE →
    11-digit ``str``; PLATE → canonical plate ``str``; DETAILS → ``(plate,
    phone)``; DETAILS_IN_PART → ``(plate, None)`` or ``(None, phone)``, None
    for the one meant but unreadable; BAD_PLATE, BAD_PHONE and UNKNOWN → the
    normalised text; others ``None``.
    """

    kind: IntentKind
    value: str | int | tuple[str, str] | tuple[str | None, str | None] | None = None


def _words(intent: Intent, *words: str) -> dict[str, Intent]:
    return dict.fromkeys(words, intent)


# Keywords that change nothing: a question mark around them is fine ("状态？").
_QUESTIONS: dict[str, Intent] = {
    **_words(Intent(IntentKind.REPORT), "快处", "事故快处", "报案", "report", "report accident"),
    **_words(Intent(IntentKind.STATUS), "状态", "我的案件", "查询", "进度", "status", "my case"),
    **_words(Intent(IntentKind.RESCHEDULE), "改约", "改期", "重新预约", "预约", "时段", "reschedule", "book",
             "slots"),
    **_words(Intent(IntentKind.HELP), "帮助", "help", "?", "？"),
    **_words(Intent(IntentKind.LANGUAGE, "en"), "english", "en", "英文", "英语"),
    **_words(Intent(IntentKind.LANGUAGE, "zh"), "中文", "chinese", "汉语"),
}
# Keywords that start something destructive (each then asks for a confirmation) or confirm it.
_COMMANDS: dict[str, Intent] = {
    **_words(Intent(IntentKind.CANCEL), "取消", "取消预约", "cancel", "cancel appointment"),
    **_words(Intent(IntentKind.WITHDRAW), "撤案", "撤销案件", "withdraw", "withdraw case"),
    **_words(Intent(IntentKind.CONFIRM), "确认", "确定", "是", "confirm", "yes"),
    **_words(Intent(IntentKind.CONFIRM, "cancel"), "确认取消", "confirm cancel"),
    **_words(Intent(IntentKind.CONFIRM, "withdraw"), "确认撤案", "confirm withdraw"),
}
_KEYWORDS = {**_QUESTIONS, **_COMMANDS}


def normalise(text: str) -> str:
    """NFKC-fold ``text``, drop zero-width characters, strip and collapse whitespace.

    Full-width digits, letters and the ideographic space become ASCII;
    Chinese characters are kept. Never raises for a ``str``.
    """
    return " ".join(fold(text).split())


def parse_plate(text: str) -> str | None:
    """Return the canonical mainland plate in ``text`` (e.g. ``"粤A12345"``), or ``None``.

    The whole text must be the plate; case, full-width characters, spaces,
    dots (``粤A·12345``) and dashes are tolerated. Covers ordinary 7-char
    plates, 学/警/挂/港/澳 plates and 8-char new-energy plates. Never raises.
    """
    candidate = _PLATE_SEPARATORS.sub("", normalise(text)).upper()
    return candidate if PLATE.fullmatch(candidate) else None


def parse_phone(text: str) -> str | None:
    """Return the bare 11-digit mainland mobile number in ``text``, or ``None``.

    Accepts an optional ``+86``/``86``/``0086`` prefix, spaces or dashes
    between groups and full-width digits. Never raises.
    """
    match = PHONE.fullmatch(_DASHES_AND_SPACES.sub("", normalise(text)))
    return match.group(1) if match else None


def parse_join_code(text: str) -> str | None:
    """Return the 6-digit join code if ``text`` is exactly that, else ``None``. Never raises."""
    candidate = normalise(text)
    return candidate if _JOIN_CODE_RE.fullmatch(candidate) else None


def classify(text: str) -> Intent:
    """Classify a driver's text message. Never raises.

    Checked in this order, first match wins:

    1. keywords, whole message, case-insensitive, a surrounding "。.!~"
       ignored, and a "?" too around those that change nothing: REPORT,
       STATUS, RESCHEDULE, HELP ("帮助", "help", "?"), LANGUAGE ("状态？"
       is STATUS, but "取消?" asks, it does not order); CANCEL, WITHDRAW,
       CONFIRM;
    2. RETAKE: "重拍 N" / "重拍N" / "retake N" (N of one or two digits;
       a bare "重拍"/"retake" gives value ``None``);
    3. CHOICE: a single digit 1..9;
    4. JOIN_CODE: exactly 6 digits;
    5. PHONE: an 11-digit mobile number (with optional +86 prefix);
    6. PLATE: a mainland plate;

    7. DETAILS: a plate and a phone in one message, in either order;
       DETAILS_IN_PART: the same with one of them unreadable ("粤Z1
       13800138000"): the readable one is not lost;
    8. BAD_PHONE: 7 to 15 digits, or a phone label with no mobile after it;
       BAD_PLATE: a province character and a letter followed by what is not
       a plate, or a plate label with no plate after it;
    9. UNKNOWN, carrying the normalised text.

    For 4-8 a leading label ("车牌：", "手机", "my plate is"), closing
    punctuation and brackets round "+86" are dropped first.

    Digit strings differ in length, so a 6-digit number is always a join
    code, never part of a phone number, and a lone digit is a slot choice.
    """
    clean = normalise(text)
    folded = clean.casefold()
    keyword = (_KEYWORDS.get(folded) or _KEYWORDS.get(folded.strip(_KEYWORD_PUNCTUATION))
               or _QUESTIONS.get(folded.strip(_KEYWORD_PUNCTUATION + _QUESTION_MARKS)))
    if keyword is not None:
        return keyword
    retake = _RETAKE_RE.fullmatch(folded)
    if retake is not None:
        number = retake.group(1)
        return Intent(IntentKind.RETAKE, int(number) if number else None)
    choice = clean.strip(_KEYWORD_PUNCTUATION)  # "2。" picks slot 2 as well
    if _CHOICE_RE.fullmatch(choice):
        return Intent(IntentKind.CHOICE, int(choice))
    value_text = _VALUE_LABEL.sub("", clean).strip(_VALUE_PUNCTUATION)
    value_text = re.sub(r"^[(（]\s*(\+?86)\s*[)）]", r"\1", value_text)
    for kind, parse in (
        (IntentKind.JOIN_CODE, parse_join_code),
        (IntentKind.PHONE, parse_phone),
        (IntentKind.PLATE, parse_plate),
    ):
        value = parse(value_text)
        if value is not None:
            return Intent(kind, value)
    return _details(value_text) or _attempted_value(clean, value_text) or Intent(IntentKind.UNKNOWN, clean)


#: The most groups a plate and a phone in one message come in ("粤 A 1 2 3 4 5 138 0013 8000"); a longer message is
#: not just the two details, and each way of cutting it in two costs two parses.
_MOST_DETAIL_GROUPS = 16


def _details(clean: str) -> Intent | None:
    """A plate and a phone in one message ("粤A12345 13800138000", "车牌粤A12345，手机13800138000"), or one of
    them and an unreadable try at the other ("粤Z1 13800138000": acceptance pass, where both were lost).

    The message is cut in two at each gap between its groups, so that either value may be typed in groups of its
    own ("粤B 12345 139 0013 9000": a driver's pass, where both were lost as not understood). A group that is only a
    label ("手机", "plate") is left out wherever it stands; one that starts with a label starts a value."""
    groups = [group for group in re.split(r"[\s,，;；、/]+", clean)
              if group and _VALUE_LABEL.sub("", group).strip(_VALUE_PUNCTUATION)]
    if not 2 <= len(groups) <= _MOST_DETAIL_GROUPS:
        return None
    in_part = None
    for cut in range(1, len(groups)):
        one, other = _detail(groups[:cut]), _detail(groups[cut:])
        kinds = {one.kind, other.kind}
        if kinds == {IntentKind.PLATE, IntentKind.PHONE}:
            plate, phone = (one, other) if one.kind is IntentKind.PLATE else (other, one)
            return Intent(IntentKind.DETAILS, (plate.value, phone.value))
        if in_part is None and kinds in ({IntentKind.PLATE, IntentKind.BAD_PHONE},
                                         {IntentKind.PHONE, IntentKind.BAD_PLATE}):
            readable = one if one.kind in (IntentKind.PLATE, IntentKind.PHONE) else other
            in_part = Intent(IntentKind.DETAILS_IN_PART, (readable.value, None) if readable.kind is IntentKind.PLATE
                             else (None, readable.value))
    return in_part


def _detail(groups: list[str]) -> Intent:
    """Groups that may be one value of a plate-and-phone message: the value, an unreadable try at one (by its shape
    alone: words after a label are not a try at a phone), or UNKNOWN. A label past the first group ends it: "粤B
    plate" is no plate 粤BPLATE."""
    if any(_VALUE_LABEL.match(group) for group in groups[1:]):
        return Intent(IntentKind.UNKNOWN, " ".join(groups))
    value = _VALUE_LABEL.sub("", " ".join(groups)).strip(_VALUE_PUNCTUATION)
    if (plate := parse_plate(value)) is not None:
        return Intent(IntentKind.PLATE, plate)
    if (phone := parse_phone(value)) is not None:
        return Intent(IntentKind.PHONE, phone)
    return Intent(_shaped_like(value) or IntentKind.UNKNOWN, value)


def _attempted_value(clean: str, value_text: str) -> Intent | None:
    """A plate or a phone number the driver meant to give, but in a shape that is not one."""
    shape = _shaped_like(value_text)
    if _PHONE_LABEL.match(clean) or shape is IntentKind.BAD_PHONE:
        return Intent(IntentKind.BAD_PHONE, clean)
    if _PLATE_LABEL.match(clean) or shape is IntentKind.BAD_PLATE:
        return Intent(IntentKind.BAD_PLATE, clean)
    return None


def _shaped_like(value_text: str) -> IntentKind | None:
    """BAD_PHONE or BAD_PLATE for text shaped like a try at one (7 to 15 digits; a province and a letter, then
    letters or digits), else None."""
    bare = _DASHES_AND_SPACES.sub("", value_text).upper()
    if _PHONE_ATTEMPT.fullmatch(bare):
        return IntentKind.BAD_PHONE
    if _PLATE_ATTEMPT.fullmatch(_PLATE_SEPARATORS.sub("", bare)):
        return IntentKind.BAD_PLATE
    return None
