"""Driver text → intent: the conversation contract of DESIGN.md §5."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.wechat.parsing import (
    PROVINCES,
    Intent,
    IntentKind,
    classify,
    normalise,
    parse_join_code,
    parse_phone,
    parse_plate,
)

BOUNDED = settings(max_examples=200, deadline=None)

SERIAL_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"  # GA 36: no I, no O
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
SEPARATORS = [" ", "·", "-", ".", "\u3000", "－", "．", " · "]


def _chars(alphabet: str, n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=n, max_size=n)


def _prefix() -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(PROVINCES), st.sampled_from(LETTERS)).map("".join)


ORDINARY = st.tuples(_prefix(), _chars(SERIAL_CHARS, 5)).map("".join)
SPECIAL = st.tuples(_prefix(), _chars(SERIAL_CHARS, 4), st.sampled_from("学警挂港澳")).map("".join)
SMALL_NEW_ENERGY = st.tuples(
    _prefix(), st.sampled_from("ABCDEFGHJK"), st.sampled_from(SERIAL_CHARS), _chars(DIGITS, 4)
).map("".join)
LARGE_NEW_ENERGY = st.tuples(_prefix(), _chars(DIGITS, 5), st.sampled_from("DF")).map("".join)
CANONICAL_PLATES = st.one_of(ORDINARY, SPECIAL, SMALL_NEW_ENERGY, LARGE_NEW_ENERGY)


def _full_width(char: str) -> str:
    return chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char


@st.composite
def mangled(draw: st.DrawFn, canonical: str, separators: list[str]) -> str:
    """``canonical`` as a driver might type it: odd case, full-width, separators."""
    out = []
    for index, char in enumerate(canonical):
        if index and draw(st.booleans()):
            out.append(draw(st.sampled_from(separators)))
        if draw(st.booleans()):
            char = char.lower()
        if draw(st.booleans()):
            char = _full_width(char)
        out.append(char)
    padding = st.sampled_from(["", " ", "\u3000", "\t"])
    return draw(padding) + "".join(out) + draw(padding)


# -- normalise ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３", "ABC123"),
        ("  快处  ", "快处"),
        ("a\u3000\u3000b\t\nc", "a b c"),
        ("粤Ａ　１２３４５", "粤A 12345"),
        ("\u200b1\ufeff", "1"),
        ("", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


# -- plates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("粤A12345", "粤A12345"),
        ("粤A·12345", "粤A12345"),
        ("粤a 12345", "粤A12345"),
        ("粤Ａ－１２３４５", "粤A12345"),
        ("京B-A1C23", "京BA1C23"),
        ("粤AD12345", "粤AD12345"),
        ("粤AF12345", "粤AF12345"),
        ("沪AD E1234", "沪ADE1234"),
        ("粤A12345D", "粤A12345D"),
        ("粤A12345f", "粤A12345F"),
        ("粤A1234学", "粤A1234学"),
        ("粤A1234警", "粤A1234警"),
        ("粤Z1234港", "粤Z1234港"),
        ("粤Z1234澳", "粤Z1234澳"),
        ("粤A1234挂", "粤A1234挂"),
    ],
)
def test_parse_plate_accepts(raw: str, expected: str) -> None:
    assert parse_plate(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "粤A1234",  # too short
        "粤A1234567",  # too long
        "港A12345",  # not a province abbreviation
        "粤112345",  # authority must be a letter
        "粤A1234O",  # O is never a serial letter
        "粤A12I45",  # nor I
        "粤A123456",  # 8 chars but neither new-energy shape
        "粤AZ12345",  # small new-energy letter is A-K
        "粤A12345Z",  # large new-energy suffix is D or F
        "粤A12345学",  # special suffix only on 7-char plates
        "粤A12 345 我的车",
        "my plate is 粤A12345",
    ],
)
def test_parse_plate_rejects(raw: str) -> None:
    assert parse_plate(raw) is None


@BOUNDED
@given(CANONICAL_PLATES.flatmap(lambda plate: st.tuples(st.just(plate), mangled(plate, SEPARATORS))))
def test_generated_plates_parse_to_canonical(case: tuple[str, str]) -> None:
    canonical, typed = case
    assert parse_plate(typed) == canonical
    assert classify(typed) == Intent(IntentKind.PLATE, canonical)


# -- phones ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13812345678", "13812345678"),
        ("138 1234 5678", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("+8613812345678", "13812345678"),
        ("8613812345678", "13812345678"),
        ("0086-138-1234-5678", "13812345678"),
        ("１９９１２３４５６７８", "19912345678"),
    ],
)
def test_parse_phone_accepts(raw: str, expected: str) -> None:
    assert parse_phone(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "1381234567",
        "138123456789",
        "12812345678",
        "23812345678",
        "+87 13812345678",
        "138/1234/5678",
        "tel 13812345678",
    ],
)
def test_parse_phone_rejects(raw: str) -> None:
    assert parse_phone(raw) is None


@st.composite
def typed_phones(draw: st.DrawFn) -> tuple[str, str]:
    digits = "1" + draw(st.sampled_from("3456789")) + draw(_chars(DIGITS, 9))
    separator = st.sampled_from(["", " ", "-", "\u3000", "－"])
    groups = [digits[:3], digits[3:7], digits[7:]]
    typed = groups[0] + draw(separator) + groups[1] + draw(separator) + groups[2]
    prefix = draw(st.sampled_from(["", "+86", "86", "0086"]))
    typed = prefix + (draw(separator) if prefix else "") + typed
    typed = "".join(_full_width(c) if draw(st.booleans()) else c for c in typed)
    return digits, typed


@BOUNDED
@given(typed_phones())
def test_generated_phones_parse_to_bare_digits(case: tuple[str, str]) -> None:
    digits, typed = case
    assert parse_phone(typed) == digits
    assert classify(typed) == Intent(IntentKind.PHONE, digits)


# 12 and 14 digits can be neither a bare mobile nor one with an 86/0086 prefix.
@BOUNDED
@given(st.sampled_from([1, 2, 5, 6, 7, 10, 12, 14, 16, 20]).flatmap(lambda n: _chars(DIGITS, n - 1)))
def test_digit_strings_of_other_lengths_are_not_phones(rest: str) -> None:
    assert parse_phone("1" + rest) is None


# -- join codes ----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("123456", "123456"), (" ０１２３４５ ", "012345")])
def test_parse_join_code_accepts(raw: str, expected: str) -> None:
    assert parse_join_code(raw) == expected


@pytest.mark.parametrize("raw", ["12345", "1234567", "123 456", "12345a", "١٢٣٤٥٦"])
def test_parse_join_code_rejects(raw: str) -> None:
    assert parse_join_code(raw) is None


# -- classify ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("快处", Intent(IntentKind.REPORT)),
        ("报案", Intent(IntentKind.REPORT)),
        ("report", Intent(IntentKind.REPORT)),
        ("ＲＥＰＯＲＴ", Intent(IntentKind.REPORT)),
        ("状态", Intent(IntentKind.STATUS)),
        ("Status", Intent(IntentKind.STATUS)),
        ("状态。", Intent(IntentKind.STATUS)),
        ("取消！", Intent(IntentKind.CANCEL)),
        ("取消？", Intent(IntentKind.UNKNOWN, "取消?")),  # a question, not a command
        ("改约", Intent(IntentKind.RESCHEDULE)),
        ("RESCHEDULE", Intent(IntentKind.RESCHEDULE)),
        ("取消", Intent(IntentKind.CANCEL)),
        ("cancel", Intent(IntentKind.CANCEL)),
        ("重拍 3", Intent(IntentKind.RETAKE, 3)),
        ("重拍3", Intent(IntentKind.RETAKE, 3)),
        ("重拍　１２", Intent(IntentKind.RETAKE, 12)),
        ("Retake 2", Intent(IntentKind.RETAKE, 2)),
        ("retake", Intent(IntentKind.RETAKE, None)),
        ("帮助", Intent(IntentKind.HELP)),
        ("HELP", Intent(IntentKind.HELP)),
        ("?", Intent(IntentKind.HELP)),
        ("？", Intent(IntentKind.HELP)),
        ("English", Intent(IntentKind.LANGUAGE, "en")),
        ("EN", Intent(IntentKind.LANGUAGE, "en")),
        ("中文", Intent(IntentKind.LANGUAGE, "zh")),
        ("chinese", Intent(IntentKind.LANGUAGE, "zh")),
        ("1", Intent(IntentKind.CHOICE, 1)),
        ("９", Intent(IntentKind.CHOICE, 9)),
        (" 7 ", Intent(IntentKind.CHOICE, 7)),
        ("0", Intent(IntentKind.UNKNOWN, "0")),
        ("10", Intent(IntentKind.UNKNOWN, "10")),
        ("654321", Intent(IntentKind.JOIN_CODE, "654321")),
        ("１３８１２３４５６７８", Intent(IntentKind.PHONE, "13812345678")),
        ("粤A·12345", Intent(IntentKind.PLATE, "粤A12345")),
        ("粤AD12345", Intent(IntentKind.PLATE, "粤AD12345")),
        ("你好　 世界", Intent(IntentKind.UNKNOWN, "你好 世界")),
        ("reports", Intent(IntentKind.UNKNOWN, "reports")),
        ("", Intent(IntentKind.UNKNOWN, "")),
    ],
)
def test_classify_examples(raw: str, expected: Intent) -> None:
    assert classify(raw) == expected


def test_intent_is_frozen() -> None:
    intent = classify("1")
    with pytest.raises(AttributeError):
        intent.value = 2  # type: ignore[misc]


@BOUNDED
@given(st.text())
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    assert isinstance(normalise(text), str)
    for parse in (parse_plate, parse_phone, parse_join_code):
        result = parse(text)
        assert result is None or isinstance(result, str)


@BOUNDED
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_classify_never_raises_on_arbitrary_unicode(text: str) -> None:
    intent = classify(text)
    assert isinstance(intent.kind, IntentKind)
    if intent.kind is IntentKind.UNKNOWN:
        assert intent.value == normalise(text)


@pytest.mark.parametrize(("typed", "kind", "value"), [
    ("粤A12345。", IntentKind.PLATE, "粤A12345"),
    ("我的车牌粤A12345", IntentKind.PLATE, "粤A12345"),
    ("车牌号：粤AD12345", IntentKind.PLATE, "粤AD12345"),
    ("my plate is 粤B12345", IntentKind.PLATE, "粤B12345"),
    ("手机13800138000", IntentKind.PHONE, "13800138000"),
    ("手机号是 138-0013-8000。", IntentKind.PHONE, "13800138000"),
    ("(+86)13800138000", IntentKind.PHONE, "13800138000"),
    ("（+86）138 0013 8000", IntentKind.PHONE, "13800138000"),
    ("加入码 123456", IntentKind.JOIN_CODE, "123456"),
    ("重拍第2张", IntentKind.RETAKE, 2),
    ("重拍 第 3 张", IntentKind.RETAKE, 3),
    ("2。", IntentKind.CHOICE, 2),
    ("３。", IntentKind.CHOICE, 3),
    ("My plate: 粤A12345", IntentKind.PLATE, "粤A12345"),
    ("my phone is 13800138000", IntentKind.PHONE, "13800138000"),
    ("my mobile is 138 0013 8000", IntentKind.PHONE, "13800138000"),
    ("tel:13800138000", IntentKind.PHONE, "13800138000"),
])
def test_labels_and_punctuation_drivers_add_are_understood(typed, kind, value):
    assert classify(typed) == Intent(kind, value)


@pytest.mark.parametrize("typed", ["code", "对方车牌：粤B99999", "对方手机13900139000", "对方电话：13900139000",
                                   "hello", "12"])
def test_the_other_party_s_details_and_other_text_stay_unknown(typed):
    assert classify(typed).kind is IntentKind.UNKNOWN


BAD_PLATES = ["车牌", "我的车牌是", "粤A1234", "粤AO12345", "plate abc", "粤Z1", "粤A", "京B 1"]
BAD_PHONES = ["手机", "手机1380013800", "1380013800", "138001380001", "12345678901", "my phone 123"]


@pytest.mark.parametrize(("typed", "kind"), [(t, IntentKind.BAD_PLATE) for t in BAD_PLATES]
                         + [(t, IntentKind.BAD_PHONE) for t in BAD_PHONES])
def test_a_plate_or_phone_in_a_shape_that_is_not_one_is_told_apart(typed, kind):
    """So the reply can say which format is expected."""
    assert classify(typed).kind is kind


@pytest.mark.parametrize(("typed", "plate", "phone"), [
    ("粤A12345 13800138000", "粤A12345", "13800138000"),
    ("13800138000，粤AD12345", "粤AD12345", "13800138000"),
    ("车牌粤A12345，手机13800138000", "粤A12345", "13800138000"),
    ("粤A12345 / +8613800138000", "粤A12345", "13800138000"),
])
def test_a_plate_and_a_phone_in_one_message_are_both_taken(typed, plate, phone):
    assert classify(typed) == Intent(IntentKind.DETAILS, (plate, phone))


@pytest.mark.parametrize(("typed", "plate", "phone"), [
    ("粤B 12345 13900139000", "粤B12345", "13900139000"),  # a driver's pass: both were lost as not understood
    ("13900139000 粤B 12345", "粤B12345", "13900139000"),
    ("粤B12345 139 0013 9000", "粤B12345", "13900139000"),
    ("车牌 粤B 12345，手机 139-0013-9000", "粤B12345", "13900139000"),
])
def test_a_plate_and_a_phone_each_typed_in_groups_are_both_taken(typed, plate, phone):
    assert classify(typed) == Intent(IntentKind.DETAILS, (plate, phone))


@BOUNDED
@given(CANONICAL_PLATES.flatmap(lambda plate: st.tuples(st.just(plate), mangled(plate, [" ", "·", "-", "\u3000"]))),
       typed_phones(), st.sampled_from([" ", "，", ", ", "；", " / ", "\u3000"]), st.booleans())
def test_generated_plates_and_phones_in_one_message_are_both_taken(plate, phone, between, phone_first) -> None:
    (canonical, typed_plate), (digits, typed_phone) = plate, phone
    typed = between.join([typed_phone, typed_plate] if phone_first else [typed_plate, typed_phone])
    assert classify(typed) == Intent(IntentKind.DETAILS, (canonical, digits))


@pytest.mark.parametrize(("typed", "plate", "phone"), [
    ("粤A12345 13800138000 手机", "粤A12345", "13800138000"),  # a label standing alone is left out, wherever
    ("粤A12345,13800138000 plate", "粤A12345", "13800138000"),
    ("my plate is 粤A12345 13800138000", "粤A12345", "13800138000"),
])
def test_labels_standing_alone_around_the_two_details_are_left_out(typed, plate, phone):
    assert classify(typed) == Intent(IntentKind.DETAILS, (plate, phone))


@pytest.mark.parametrize("typed", ["粤A12345 手机 13800138000 谢谢", "粤AD12345/手机，谢谢", "13800138000 车牌、在哪",
                                   "粤B plate 13800138000 ok"])
def test_words_beside_a_value_are_neither_a_value_nor_a_try_at_one(typed):
    """Review: a phone label followed by words read as an unreadable phone (the driver told their phone could not be
    read), and "粤B plate" as the plate 粤BPLATE."""
    assert classify(typed).kind is IntentKind.UNKNOWN


def test_a_label_inside_a_plate_s_groups_ends_the_plate():
    assert classify("粤B plate 13800138000") == Intent(IntentKind.DETAILS_IN_PART, (None, "13800138000"))


@BOUNDED
@given(CANONICAL_PLATES, typed_phones(), st.sampled_from(["谢谢", "hello", "在哪", "ok 谢谢", "请问"]),
       st.sampled_from([0, 1, 2]))
def test_a_plate_and_a_phone_with_other_words_are_not_details(plate, phone, word, where) -> None:
    parts = [plate, phone[1]]
    parts.insert(where, word)
    assert classify(" ".join(parts)).kind not in (IntentKind.DETAILS, IntentKind.DETAILS_IN_PART)


@pytest.mark.parametrize(("typed", "plate", "phone"), [
    ("粤B 1 13900139000", None, "13900139000"),
    ("粤Z1 13800138000", None, "13800138000"),
    ("13800138000 粤A1234", None, "13800138000"),
    ("车牌粤Z1，手机13800138000", None, "13800138000"),
    ("粤A12345 1380013800", "粤A12345", None),
])
def test_a_plate_and_a_phone_one_of_them_unreadable_keep_the_readable_one(typed, plate, phone):
    assert classify(typed) == Intent(IntentKind.DETAILS_IN_PART, (plate, phone))


@pytest.mark.parametrize("typed", ["粤A12345 粤Z1", "粤Z1 1380013800", "hello 13800138000", "粤Z1 粤A1234"])
def test_two_unreadable_values_or_a_second_of_the_same_kind_are_not_details(typed):
    assert classify(typed).kind not in (IntentKind.DETAILS, IntentKind.DETAILS_IN_PART)


@pytest.mark.parametrize(("typed", "kind", "value"), [
    ("事故快处", IntentKind.REPORT, None),
    ("我的案件", IntentKind.STATUS, None),
    ("状态？", IntentKind.STATUS, None),
    ("status?", IntentKind.STATUS, None),
    ("查询", IntentKind.STATUS, None),
    ("取消预约", IntentKind.CANCEL, None),
    ("改期", IntentKind.RESCHEDULE, None),
    ("重新预约", IntentKind.RESCHEDULE, None),
    ("预约", IntentKind.RESCHEDULE, None),
    ("英文", IntentKind.LANGUAGE, "en"),
    ("撤案", IntentKind.WITHDRAW, None),
    ("确认取消", IntentKind.CONFIRM, "cancel"),
    ("确认撤案", IntentKind.CONFIRM, "withdraw"),
    ("确认", IntentKind.CONFIRM, None),
    ("Confirm.", IntentKind.CONFIRM, None),
])
def test_menu_labels_and_common_variants_are_understood(typed, kind, value):
    assert classify(typed) == Intent(kind, value)


@pytest.mark.parametrize("typed", ["取消?", "取消？", "撤案?", "确认?"])
def test_a_question_never_starts_or_confirms_anything(typed):
    assert classify(typed).kind not in (IntentKind.CANCEL, IntentKind.WITHDRAW, IntentKind.CONFIRM)
