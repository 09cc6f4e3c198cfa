"""Log lines never carry a driver's phone, plate or openid in full; each carries its request id."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.logs import configure_logging, log_context, mask_personal_data, never_log
from accident_service.plates_and_phones import PLATE_SEPARATORS, PROVINCES, fold, separator_runs
from accident_service.request_ids import request_id_from
from accident_service.wechat.parsing import classify, parse_phone, parse_plate
from tests.wechat.test_parsing import mangled  # a value as a driver types it, written once

PHONE, PLATE, NEV_PLATE, OPENID = "13800138000", "粤A12345", "粤AD12345", "oAbCdEfGhIjKlMnOpQrStUvWxYz12"


@pytest.mark.parametrize("secret,shown", [
    (PHONE, "138****8000"), ("+8613900139000", "139****9000"), ("0086 139 0013 9000", "139****9000"),
    ("139-0013-9000", "139****9000"),
    (PLATE, "粤A***"), (NEV_PLATE, "粤A***"), ("粤a12345", "粤a***"), ("京B·1234学", "京B***学"),
    (OPENID, "oAbC***"), ("o" + "x" * 27, "oxxx***"),
    # As drivers' phones type them (acceptance pass): full-width digits, a space after the province.
    ("１３８００１３８０００", "１３８****８０００"), ("+86 １３９ ００１３ ９０００", "１３９****９０００"),
    ("粤 B12345", "粤 B***"), ("粤·B12345", "粤·B***"),
])
def test_masked_forms(secret, shown):
    for line in (f"driver {secret} said", f"{secret}", f"<Content><![CDATA[{secret}]]></Content>",
                 f"('{secret}', 3)", f"openid={secret}&x=1", f"user_{secret}"):
        masked = mask_personal_data(line)
        assert secret not in masked, line
        assert shown in masked, (line, masked)


@pytest.mark.parametrize("secret", [PHONE, PLATE, NEV_PLATE, "京B·1234学", "粤 B12345", "粤a12345",
                                    "１３８００１３８０００", OPENID])
def test_a_line_quoting_a_url_as_it_was_sent_is_masked(secret):
    """gunicorn's DEBUG line of a request quotes its path percent-encoded (acceptance pass: the access line was
    masked, the DEBUG line beside it showed /wechat/%E7%B2%A4A12345)."""
    from urllib.parse import quote

    for path in (f"/wechat/{secret}/x", f"/desk/cases/{secret}", f"/search?q={secret}&page=2"):
        masked = mask_personal_data(f"GET {quote(path, safe='/?=&')}")
        assert secret not in masked and quote(secret, safe="") not in masked, masked
        assert quote(secret[1:], safe="") not in masked, masked  # after its first character, what identifies


def test_a_url_decoded_for_masking_cannot_write_a_line_of_its_own():
    """Only text that prints is decoded (review: %0A decoded let a path forge a log line), bytes that are not UTF-8
    are left as they came, and a form's "+" for a space still masks the plate."""
    assert mask_personal_data("GET /x/%E7%B2%A4A12345%0A2026 INFO forged") == "GET /x/粤A***5%0A2026 INFO forged"
    assert mask_personal_data("GET /%E7%B2%A4A12345%FF") == "GET /粤A***5%FF"
    assert mask_personal_data("GET /desk?q=%E7%B2%A4+B12345&page=2") == "GET /desk?q=粤+B***5&page=2"
    # A character that does not print, in the same run as a plate or a phone, keeps neither from being masked.
    assert (mask_personal_data("GET /x?text=%E4%BA%8B%E6%95%85%0A%E7%B2%A4A12345&y=1")
            == "GET /x?text=事故%0A粤A***5&y=1")
    assert mask_personal_data("GET /x?q=%E2%80%AE%E7%B2%A4A12345") == "GET /x?q=%E2%80%AE粤A***5"
    assert "13800138000" not in mask_personal_data("GET /x?q=%0D%0A%E6%89%8B%E6%9C%BA13800138000")


def test_a_request_line_read_as_latin_1_is_masked():
    """gunicorn refuses a request line sent in raw UTF-8 and quotes it read as Latin-1 (acceptance pass: "粤"
    logged as "ç²¤", the plate beside it unmasked); a run that was never UTF-8 is left as it came."""
    refused = "GET /13812345678/粤A12345 HTTP/1.1".encode().decode("latin-1")
    assert (mask_personal_data(f"Invalid HTTP request line: {refused!r}")
            == "Invalid HTTP request line: 'GET /138****5678/粤A***5 HTTP/1.1'")
    assert mask_personal_data("café ç²¤A12345") == "café 粤A***5"
    assert mask_personal_data("naïve text, nothing to mask") == "naïve text, nothing to mask"
    assert mask_personal_data("ç²¤A12345\x85") == "粤A***5\x85"


def test_gunicorn_s_refused_request_line_is_masked_for_every_province():
    """gunicorn quotes the line with %r: the Latin-1 characters that do not print come as escapes (review: 24 of
    the provinces, 苏 as "è\\x8b\\x8f", went unmasked); and a line with a plate in each form masks both."""
    from accident_service.logs import _PROVINCES

    for province in _PROVINCES:
        sent = f"GET /{province}A12345 HTTP/1.1".encode().decode("latin-1")
        assert mask_personal_data(f"Invalid HTTP request line: {sent!r}") == \
            f"Invalid HTTP request line: 'GET /{province}A***5 HTTP/1.1'", province
    both = "GET /%E7%B2%A4A12345 then " + "粤B54321".encode().decode("latin-1")
    assert mask_personal_data(both) == "GET /粤A***5 then 粤B***1"


def test_url_encoded_openids_are_masked():
    masked = mask_personal_data(f"GET /callback?state=x%26openid%3D{OPENID}%26lang%3Dzh")
    assert OPENID not in masked and "%3DoAbC***" in masked


def test_json_escaped_plates_are_masked():
    """A JSON column's parameter, as a database error quotes it, escapes the province."""
    escaped = json.dumps({"plate": NEV_PLATE})
    assert "AD12345" not in mask_personal_data(escaped)
    assert "B12345" not in mask_personal_data(json.dumps({"plate": "粤 B12345"}))  # with a space, as typed


@pytest.mark.parametrize("innocent", ["MsgId 1234567890123456", "CreateTime 1348831860", "case 20261125-ABCDE",
                                      "更新 status", "重新 submit", "京 Beijing", '"\\u8f66 Toyota"', "云.Server",
                                      "2026-11-25T02:00:00.000+00:00", "切换到English版本", "slot 13:30-14:00",
                                      "configuration error: SECRET_KEY: too short"])
def test_ordinary_text_is_left_alone(innocent):
    assert mask_personal_data(innocent) == innocent


@pytest.mark.parametrize("written,shown", [
    ("粤Ａ１２３４５", "粤Ａ***５"), ("粤A 12 345", "粤A***5"), ("粤A12 345", "粤A***5"), ("粤A·1·2345", "粤A***5"),
    ("粤A—12345", "粤A***5"), ("粤A1\u200b2345", "粤A***5"), ("粤a－12345", "粤a***5"), ("粤A_12345", "粤A***5"),
    ("粤A\u300012345", "粤A***5"), ("粤 A 1 2 3 4 5", "粤 A***5"),
])
def test_plates_written_as_the_parser_accepts_them_are_masked(written, shown):
    """Acceptance pass: the parser read these as 粤A12345, and the log showed them whole (gunicorn's access line, a
    desk login in Flask-Limiter's line, a request line gunicorn refuses)."""
    assert parse_plate(written) == "粤A12345"
    for line in (f"GET /desk/cases/{written} HTTP/1.1", f"ratelimit exceeded: login {written}", written):
        masked = mask_personal_data(line)
        assert "1234" not in _as_parsed(masked), masked
        assert shown in masked, masked


@pytest.mark.parametrize("written,shown", [
    ("1380 013 8000", "138****8000"), ("138-001-38000", "138****8000"), ("1 3 8 0 0 1 3 8 0 0 0", "1 3 8****8 0 0 0"),
    ("138\u200b00138000", "138****8000"), ("138–0013–8000", "138****8000"),
    ("＋８６ １３８ ００１３ ８０００", "＋８６ １３８****８０００"), ("86-1380-013-8000", "86-138****8000"),
])
def test_phones_written_as_the_parser_accepts_them_are_masked(written, shown):
    assert parse_phone(written) == "13800138000"
    for line in (f"GET /wechat/{written} HTTP/1.1", f"login {written}: ratelimit exceeded", f"'{written}'", written):
        masked = mask_personal_data(line)
        assert "0013" not in _as_parsed(masked) and "13800138000" not in _as_parsed(masked), masked
        assert shown in masked, masked


@pytest.mark.parametrize("line", ["tel1380 013 8000", "电话tel1380-013-8000。", "TEL13800 138 000",
                                  "phone1380-013-8000"])
def test_a_phone_with_a_label_glued_before_it_is_masked(line):
    """Acceptance pass: an oddly grouped number had to stand apart from Latin letters on both sides, so a label glued
    before it (tel1380 013 8000) left it as written. Only what follows it tells it from a token's groups."""
    masked = mask_personal_data(line)
    assert "0013" not in _as_parsed(masked) and "****" in masked, masked


def _as_parsed(line: str) -> str:
    """``line`` as the parsers read a value: folded, separators gone, in upper case."""
    return separator_runs(PLATE_SEPARATORS).sub("", fold(line)).upper()


SERIAL_LETTERS, DIGITS = "ABCDEFGHJKLMNPQRSTUVWXYZ", "0123456789"


@st.composite
def _plates(draw: st.DrawFn) -> str:
    """A plate as issued: a serial has at most two letters (the log asks three digits of a plate with separators)."""
    prefix = draw(st.sampled_from(PROVINCES)) + draw(st.sampled_from(SERIAL_LETTERS))
    shape = draw(st.sampled_from(["ordinary", "special", "small new-energy", "large new-energy"]))
    if shape == "small new-energy":
        return prefix + draw(st.sampled_from("ABCDEFGHJK")) + draw(st.sampled_from(SERIAL_LETTERS + DIGITS)) + "".join(
            draw(st.lists(st.sampled_from(DIGITS), min_size=4, max_size=4)))
    if shape == "large new-energy":
        return prefix + "".join(draw(st.lists(st.sampled_from(DIGITS), min_size=5, max_size=5))) + draw(
            st.sampled_from("DF"))
    size, letters = (5, 2) if shape == "ordinary" else (4, 1)
    serial = draw(st.lists(st.sampled_from(DIGITS), min_size=size - letters, max_size=size - letters))
    serial += draw(st.lists(st.sampled_from(SERIAL_LETTERS), max_size=letters))
    serial = draw(st.permutations(serial)) + draw(st.lists(st.sampled_from(DIGITS), min_size=size - len(serial),
                                                           max_size=size - len(serial)))
    return prefix + "".join(serial) + ("" if shape == "ordinary" else draw(st.sampled_from("学警挂港澳")))


_PHONES = st.tuples(st.sampled_from("3456789"), st.lists(st.sampled_from(DIGITS), min_size=9, max_size=9)).map(
    lambda drawn: "1" + drawn[0] + "".join(drawn[1]))


_PLATE_SEPARATORS_TYPED = [" ", "·", "•", "・", "‧", ".", "-", "‐", "–", "—", "_", "\u3000", "－", "．", "\u200b",
                           "\ufeff", " · "]
_PHONE_SEPARATORS_TYPED = [" ", "-", "‐", "‑", "–", "—", "\u3000", "－", "\u200b", "\u2060", " - "]
# Log text around a value (no province in it), and what ends the value on either side.
_LOG_TEXT = st.lists(st.sampled_from([*"abcXYZ0123456789 :/=[]{}\"'.,-_%?&", "事故", "处理", "时间"]), max_size=12).map(
    "".join)
_BEFORE = ["/", "=", "[", "(", "'", '"', ",", "：", "user_", "q="]
_AFTER = [" ", "/", "&", "]", ")", "'", '"', ",", "。", "\n"]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_plate_and_phone_the_parsers_accept_is_masked_wherever_a_line_quotes_it(data):
    before = data.draw(_LOG_TEXT, label="before")
    # After a space only when no digit ends the text before: that digit could be read as the value's first group.
    ends_before = data.draw(st.sampled_from(_BEFORE + ([] if before[-1:].isdigit() else [" "])), label="ends before")
    if data.draw(st.booleans(), label="a plate"):
        value = data.draw(_plates(), label="plate")
        written = data.draw(mangled(value, _PLATE_SEPARATORS_TYPED), label="written")
        assert parse_plate(written) == value
        label = data.draw(st.sampled_from(["", "车牌：", "我的车牌是", "my plate is "]), label="label")
        identifying = value[:-1]  # the mask keeps the province, the region letter and the last character
    else:
        value = data.draw(_PHONES, label="phone")
        country_code = data.draw(st.sampled_from(["", "+86", "0086", "86", "+86 ", "0086-"]), label="country code")
        written = data.draw(mangled(country_code + value, _PHONE_SEPARATORS_TYPED), label="written")
        assert parse_phone(written) == value
        label = data.draw(st.sampled_from(["", "手机：", "手机号", "电话 ", "my phone is ", "Tel: "]), label="label")
        identifying = value
    if label:
        assert classify(label + written).value == value
    line = (before + ends_before + label + written + data.draw(st.sampled_from(_AFTER), label="ends after")
            + data.draw(_LOG_TEXT, label="after"))
    masked = _as_parsed(mask_personal_data(line))
    assert identifying not in masked, masked
    if identifying == value:  # a phone: first three digits and last four kept, as the log has always shown them
        assert f"{value[:3]}****{value[-4:]}" in masked, masked


@pytest.mark.parametrize("innocent", [
    "2026-12-07 01:30:11.123", "2026-12-07 13:30:11,123 INFO accident_service.jobs [job:purge:7] purged 1380 photos",
    "2026-12-07T01:30:11.123+00:00 took 13.80013800 s", "slot 2026-12-07 13:00-14:00",
    '10.0.0.7 "GET /desk/cases/42" 200 1380013 800ms QZ3K5MBXW2AQ7RTYDLKE4H6N',
    '10.0.0.7 "GET /photos/9" 200 1380013 8000ms QZ3K5MBXW2AQ7RTYDLKE4H6N',
    "0f8c2b1e-3c4d-4b5a-9e6f-7a8b9c0d1e2f", "c0ffee13-8001-3800-0abc-def012345678", "e1380-0138-000f-4a2b",
    "12345678-1380-4138-8000-123456789012", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "token 7a13800138-00ab", "139.224.10.123:8000", "listening at http://0.0.0.0:8000 (pid: 13800)",
    "connect to 13.80.138.0:5432 failed", "SELECT * FROM cases WHERE id IN (13, 800, 138000) LIMIT 11 OFFSET 13800",
    "[parameters: (13800, 1380, '2026-12-07 01:30:11')]", "sent 1380013 bytes in 8000 ms",
    "更新 status 2", "重新 submit 12", "新A new era", "京 Beijing 2026", "苏州 2026-12-07",
    # A Latin word glued before an oddly grouped number is a label only when it is one (review of the label rule):
    "MAC A1-38-00-13-80-00 up", "hexdump: a1 38 00 13 80 00 0a ff", "request_id=abcdefa8-6138-0013-8000-abcdef012345",
    "sess:Q1380 0138 000;", 'etag W/"5e1380-013-8000"', "sha=deadbeef1380 013 8000", "x=ab1380 013 8000",
    "token=Zk9q1380-013-8000",
])
def test_ordinary_log_content_is_left_alone(innocent):
    assert mask_personal_data(innocent) == innocent


@pytest.mark.parametrize("header,kept", [("1380-013-8000", False), ("req-138-0013-8000", False),
                                         ("req-1380013800", True), ("0f8c2b1e-3c4d-4b5a-9e6f-7a8b9c0d1e2f", True),
                                         ("c0ffee13-8001-3800-0abc-def012345678", True)])
def test_a_request_id_the_log_would_mask_in_any_form_is_refused(header, kept):
    """The id the log shows must be the one the answer carries: one holding a mobile, however grouped, is replaced."""
    assert (request_id_from(header) == header) is kept


@pytest.fixture
def log_lines():
    """The service's real handler on a buffer, in the format asked for; restored to text afterwards."""
    buffer = io.StringIO()

    def lines(log_format: str) -> list[str]:
        configure_logging("DEBUG", log_format, stream=buffer)
        return buffer.getvalue().splitlines()

    configure_logging("DEBUG", "text", stream=buffer)
    yield lines
    configure_logging("INFO", "text", stream=sys.stderr)


def _log_everything(logger: logging.Logger) -> None:
    logger.info("booked for %s, plate %s", PHONE, PLATE)
    try:
        raise RuntimeError(f"INSERT failed: ('{OPENID}', '<xml><Content>{NEV_PLATE} {PHONE}</Content></xml>')")
    except RuntimeError:
        logger.exception("processing %s failed", OPENID)
    logger.warning("where am I", stack_info=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_message_exception_and_stack_are_masked(log_lines, log_format):
    configure_logging("DEBUG", log_format)
    with log_context("req-123"):
        _log_everything(logging.getLogger("test.pii"))
    output = "\n".join(log_lines(log_format))
    assert "INSERT failed" in output and "Traceback" in output and "where am I" in output
    for secret in (PHONE, PLATE, NEV_PLATE, OPENID):
        assert secret not in output
    assert "138****8000" in output and "req-123" in output


def test_json_lines_have_the_documented_fields(log_lines):
    configure_logging("DEBUG", "json")
    logger = logging.getLogger("test.json")
    with log_context("job:purge:7"):
        logger.info("plain")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            logger.error("with a traceback", exc_info=True)
    logger.info("outside any request")
    records = [json.loads(line) for line in log_lines("json")]
    assert [r["message"] for r in records] == ["plain", "with a traceback", "outside any request"]
    first, failed, outside = records
    assert set(first) == {"time", "level", "logger", "message", "request_id"}
    assert (first["level"], first["logger"], first["request_id"]) == ("INFO", "test.json", "job:purge:7")
    assert first["time"].endswith("+00:00")
    assert "ZeroDivisionError" in failed["exception"]
    assert outside["request_id"] == "-"


def test_text_lines_carry_the_request_id(log_lines):
    with log_context("abc"):
        logging.getLogger("test.text").warning("hello")
    (line,) = log_lines("text")
    assert line.endswith(" WARNING test.text [abc] hello")


@pytest.mark.parametrize("given,kept", [("req-42", True), ("0f8c2b1e-3c4d-4b5a-9e6f-7a8b9c0d1e2f", True),
                                        ("bad id", False), ("x" * 200, False), ("a\tb", False), ("", False),
                                        # One the log would mask: logged other than echoed (acceptance pass).
                                        ("13812345678", False), ("req-oABCDefghijklmnopqrstuvwxyz1", False),
                                        ("1380-013-8000", False)])
def test_requests_get_an_id_echoed_and_on_their_lines(app, log_lines, given, kept):
    def logs_something():
        logging.getLogger("test.web").info("serving")
        return "ok"

    app.add_url_rule("/test-log", "test_log", logs_something)
    response = app.test_client().get("/test-log", headers={"X-Request-Id": given} if given else {})
    request_id = response.headers["X-Request-Id"]
    assert (request_id == given) is kept
    assert len(request_id) >= 6 and " " not in request_id
    logging.getLogger("test.web").info("after")
    serving, after = [line for line in log_lines("text") if "test.web" in line]
    assert serving.endswith(f"[{request_id}] serving")
    assert after.endswith("[-] after")


def test_made_request_ids_are_never_masked_on_their_lines():
    """The log filter masks what looks like a phone, a plate or an openid; an id we make never does."""
    from accident_service.logs import mask_personal_data
    from accident_service.request_ids import new_request_id

    for _ in range(5000):
        request_id = new_request_id()
        assert len(request_id) == 24 and mask_personal_data(request_id) == request_id


def test_error_answers_carry_the_request_id_once_and_a_crash_is_logged_under_it(app, log_lines):
    """The id is set around the whole app: a refused push, a missing page and a crash (Flask's own 500 and its
    log line) all have it, once."""
    def crashes():
        raise RuntimeError("boom")

    app.add_url_rule("/test-crash", "test_crash", crashes)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: Flask answers 500 and logs the traceback
    client = app.test_client()
    refused = client.post("/wechat?signature=wrong&timestamp=1&nonce=2", data=b"<xml></xml>",
                          headers={"X-Request-Id": "push-403"})
    missing = client.get("/no-such-page", headers={"X-Request-Id": "page-404"})
    crashed = client.get("/test-crash", headers={"X-Request-Id": "crash-500"})

    assert [(r.status_code, r.headers.getlist("X-Request-Id")) for r in (refused, missing, crashed)] == [
        (403, ["push-403"]), (404, ["page-404"]), (500, ["crash-500"])]
    (crash_line,) = [line for line in log_lines("text") if "Exception on /test-crash" in line]
    assert "[crash-500]" in crash_line


# As the WeChat client registers them (tests/wechat_api/test_client.py checks that it does).
APP_SECRET, TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0", "86_tok1796400865Xy-Z_13800138000"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credentials_are_masked_by_value_in_every_form(log_lines, log_format):
    """urllib3's DEBUG lines quote each call's URL; a database error quotes the token being stored, by name on
    PostgreSQL and by position on SQLite; a token response is JSON. In JSON lines every quote is escaped."""
    configure_logging("DEBUG", log_format)
    never_log(APP_SECRET)
    never_log(TOKEN, token=True)
    logger = logging.getLogger("accident_service.test_credentials")
    logger.debug('"POST /cgi-bin/message/custom/send?access_token=%s HTTP/1.1" 200 27', TOKEN)
    logger.debug('{"access_token": "%s", "expires_in": 7200} {"secret": "%s"}', TOKEN, APP_SECRET)
    try:
        raise RuntimeError(f"(sqlite3.OperationalError) database is locked [SQL: UPDATE wechat_token SET "
                           f"access_token=?, expires_at=? WHERE wechat_token.appid = ?] [parameters: ('{TOKEN}', "
                           f"'2030-01-01 00:00:00', 'wx123')] {{'access_token': '{TOKEN}'}}")
    except RuntimeError:
        logger.exception("storing the token failed")
    lines = log_lines(log_format)
    assert len(lines) >= 3
    assert not [line for line in lines if TOKEN in line or APP_SECRET in line or "13800138000" in line]
    assert any("access_token=*** HTTP/1.1" in line for line in lines)
    assert any("SET access_token=?, expires_at=?" in line for line in lines)  # the statement itself is kept
    if log_format == "json":
        for line in lines:
            json.loads(line)


def test_short_values_are_not_taken_for_credentials():
    never_log("secret")
    never_log("tok1", token=True)
    assert mask_personal_data("a secret tok1 x") == "a secret tok1 x"


def test_the_app_secret_outlives_any_number_of_tokens():
    never_log(APP_SECRET)
    for n in range(20):
        never_log(f"another-token-{n:04d}", token=True)
    assert APP_SECRET not in mask_personal_data(f"secret={APP_SECRET}")
    assert "another-token-0019" not in mask_personal_data("access_token=another-token-0019")


@pytest.mark.parametrize("path", ["/desk/cases/粤A12345", "/desk/cases/粤A12345\udcff"])  # the second: a byte 0xff
def test_a_plate_in_an_access_line_s_path_is_masked_even_beside_a_byte_that_is_not_utf8(path):
    """gunicorn's access line carries the path as WSGI gives it, each byte a latin-1 character (review: one
    stray byte kept the whole path undecoded, and the plate in it unmasked)."""
    import logging

    from accident_service.logs import AccessLinePathAsSent, MaskedTextFormatter

    wsgi_path = path.encode("utf-8", "surrogateescape").decode("latin-1")
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, '"GET %(U)s" %(s)s', None, None)
    record.args = {"U": wsgi_path, "s": "404"}
    assert AccessLinePathAsSent().filter(record)
    line = MaskedTextFormatter().format(record)
    assert "A12345" not in line and "ç²¤" not in line
