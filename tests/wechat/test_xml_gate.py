"""The inbound XML gate: hostile bodies are refused before any parser runs."""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpy.crypto import WeChatCrypto
from wechatpy.events import ClickEvent, LocationEvent, ScanEvent, SubscribeEvent, SubscribeScanEvent
from wechatpy.messages import ImageMessage, LocationMessage, TextMessage, UnknownMessage

from accident_service.wechat.xml_gate import (
    MAX_BODY_BYTES,
    REASONS,
    UnsafeXml,
    check_body,
    check_xml_text,
    parse_inbound,
)

BOUNDED = settings(max_examples=200, deadline=None)

# Samples from the WeChat documentation (接收普通消息 / 接收事件推送).
TEXT = """<xml>
  <ToUserName><![CDATA[toUser]]></ToUserName>
  <FromUserName><![CDATA[fromUser]]></FromUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[text]]></MsgType>
  <Content><![CDATA[this is a test]]></Content>
  <MsgId>1234567890123456</MsgId>
</xml>"""
IMAGE = """<xml>
  <ToUserName><![CDATA[toUser]]></ToUserName>
  <FromUserName><![CDATA[fromUser]]></FromUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[image]]></MsgType>
  <PicUrl><![CDATA[this is a url]]></PicUrl>
  <MediaId><![CDATA[media_id]]></MediaId>
  <MsgId>1234567890123456</MsgId>
</xml>"""
LOCATION = """<xml>
  <ToUserName><![CDATA[toUser]]></ToUserName>
  <FromUserName><![CDATA[fromUser]]></FromUserName>
  <CreateTime>1351776360</CreateTime>
  <MsgType><![CDATA[location]]></MsgType>
  <Location_X>23.134521</Location_X>
  <Location_Y>113.358803</Location_Y>
  <Scale>20</Scale>
  <Label><![CDATA[位置信息]]></Label>
  <MsgId>1234567890123456</MsgId>
</xml>"""
_EVENT = """<xml>
  <ToUserName><![CDATA[toUser]]></ToUserName>
  <FromUserName><![CDATA[FromUser]]></FromUserName>
  <CreateTime>123456789</CreateTime>
  <MsgType><![CDATA[event]]></MsgType>
  {}
</xml>"""
SUBSCRIBE = _EVENT.format("<Event><![CDATA[subscribe]]></Event>")
SUBSCRIBE_SCENE = _EVENT.format(
    "<Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_join:123456]]></EventKey>"
    "<Ticket><![CDATA[TICKET]]></Ticket>"
)
SCAN = _EVENT.format(
    "<Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[join:123456]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>"
)
CLICK = _EVENT.format("<Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[REPORT_ACCIDENT]]></EventKey>")
LOCATION_EVENT = _EVENT.format(
    "<Event><![CDATA[LOCATION]]></Event><Latitude>23.137466</Latitude>"
    "<Longitude>113.352425</Longitude><Precision>119.385040</Precision>"
)

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol4;</Content><MsgId>1</MsgId></xml>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"""
PARAMETER_ENTITY = """<!DOCTYPE xml [
<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd">
%remote;
]>
<xml><MsgType>text</MsgType></xml>"""
HOSTILE = [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY, "<!DOCTYPE xml>\n" + TEXT]
# Markup that looks like a declaration but is none to an XML parser (the keywords are case-sensitive,
# and entities are declared inside a DOCTYPE only): not a WeChat document, refused as such.
DECLARATION_LOOKALIKES = ["<!doctype xml>" + TEXT, '<!ENTITY x "y"><xml></xml>']


def _reason_of_body(body: bytes, **kwargs: int) -> str:
    with pytest.raises(UnsafeXml) as caught:
        check_body(body, **kwargs)
    return caught.value.reason


# -- hostile bodies ------------------------------------------------------------


@pytest.mark.parametrize("payload", HOSTILE)
def test_doctype_payloads_are_refused_before_parsing(payload: str) -> None:
    assert _reason_of_body(payload.encode()) == "doctype"
    with pytest.raises(UnsafeXml) as caught:
        parse_inbound(payload)
    assert caught.value.reason == "doctype"


@pytest.mark.parametrize("payload", DECLARATION_LOOKALIKES)
def test_declaration_lookalikes_are_refused_before_parsing(payload: str) -> None:
    assert _reason_of_body(payload.encode()) == "not_xml"
    with pytest.raises(UnsafeXml) as caught:
        parse_inbound(payload)
    assert caught.value.reason == "not_xml" and caught.value.http_status == 400


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_wide_encodings_cannot_smuggle_a_doctype(codec: str) -> None:
    assert _reason_of_body(BILLION_LAUGHS.encode(codec)) == "encoding"


@pytest.mark.parametrize("body", [b"<xml>\xff\xfe</xml>", b"<xml>\x00</xml>", b"<xml>\xc3</xml>"])
def test_bodies_that_are_not_plain_utf8_are_refused(body: bytes) -> None:
    assert _reason_of_body(body) == "encoding"


def test_declared_foreign_encoding_is_refused() -> None:
    body = b'<?xml version="1.0" encoding="UTF-7"?>' + TEXT.encode()
    assert _reason_of_body(body) == "encoding"


def test_oversized_body_is_refused_and_the_cap_is_inclusive() -> None:
    padded = TEXT.replace("this is a test", "x" * (MAX_BODY_BYTES - len(TEXT) + len("this is a test")))
    assert len(padded.encode()) == MAX_BODY_BYTES
    check_body(padded.encode())
    too_big = _reason_of_body(padded.encode() + b" ")
    assert too_big == "too_large"
    assert _reason_of_body(TEXT.encode(), max_bytes=100) == "too_large"
    with pytest.raises(UnsafeXml) as caught:
        check_xml_text("<xml>" + "汉" * 30000 + "</xml>")  # 90 kB of UTF-8 in 30k characters
    assert caught.value.reason == "too_large"
    assert caught.value.http_status == 413


@pytest.mark.parametrize(
    "payload",
    [
        '<?xml-stylesheet href="http://127.0.0.1/x.xsl"?>' + TEXT,
        TEXT.replace("<MsgId>", "<?php system('id') ?><MsgId>"),
        '  <?xml version="1.0"?>' + TEXT,  # a declaration is only legal at the very start
    ],
)
def test_processing_instructions_are_refused(payload: str) -> None:
    assert _reason_of_body(payload.encode()) == "processing_instruction"


@pytest.mark.parametrize(
    "payload",
    [b"", b"   ", b"hello", b'{"MsgType": "text"}', b"<foo/>", b"<xml/>", b"<!-- hi --><xml></xml>", b"<XML></XML>"],
)
def test_documents_not_starting_with_xml_are_refused(payload: bytes) -> None:
    assert _reason_of_body(payload) == "not_xml"


def test_unsafe_xml_is_a_service_error_with_a_stable_code() -> None:
    error = UnsafeXml("doctype")
    assert error.code == "unsafe_xml"
    assert error.http_status == 400
    assert error.to_dict()["details"] == {"reason": "doctype"}


# -- what WeChat really sends passes ------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        TEXT,
        "\n\t " + TEXT,
        '<?xml version="1.0" encoding="UTF-8"?>\n' + TEXT,
        "\ufeff" + TEXT,
        # Driver text is sent as CDATA; markup-looking text in it is not markup.
        TEXT.replace("this is a test", "<?xml <!DOCTYPE <!ENTITY ]]&gt;"),
        TEXT.replace("<![CDATA[this is a test]]>", "&lt;!DOCTYPE x&gt; &amp; &#x4E2D;"),
    ],
)
def test_plausible_bodies_pass(payload: str) -> None:
    check_body(payload.encode())
    assert isinstance(parse_inbound(payload), TextMessage)


def test_text_sample_parses() -> None:
    message = parse_inbound(TEXT)
    assert isinstance(message, TextMessage)
    assert (message.source, message.target, message.content) == ("fromUser", "toUser", "this is a test")
    assert (message.id, message.time) == (1234567890123456, 1348831860)


@pytest.mark.parametrize("create_time", [0, 1348831860, 2**32 - 1])
def test_any_unix_time_in_32_bits_passes_and_reads_as_a_date(create_time: int) -> None:
    message = parse_inbound(TEXT.replace("1348831860", str(create_time)))
    assert message.time == create_time
    assert message.create_time.timestamp() == create_time


def test_image_sample_parses() -> None:
    message = parse_inbound(IMAGE)
    assert isinstance(message, ImageMessage)
    assert (message.media_id, message.image) == ("media_id", "this is a url")


def test_location_sample_parses() -> None:
    message = parse_inbound(LOCATION)
    assert isinstance(message, LocationMessage)
    assert (message.location_x, message.location_y, message.label) == ("23.134521", "113.358803", "位置信息")


@pytest.mark.parametrize(
    ("payload", "kind", "attributes"),
    [
        (SUBSCRIBE, SubscribeEvent, {"event": "subscribe", "id": 0}),
        (SUBSCRIBE_SCENE, SubscribeScanEvent, {"scene_id": "join:123456", "ticket": "TICKET"}),
        (SCAN, ScanEvent, {"scene_id": "join:123456", "ticket": "TICKET"}),
        (CLICK, ClickEvent, {"key": "REPORT_ACCIDENT"}),
        (LOCATION_EVENT, LocationEvent, {"latitude": 23.137466, "longitude": 113.352425}),
    ],
)
def test_event_samples_parse(payload: str, kind: type, attributes: dict[str, object]) -> None:
    check_body(payload.encode())
    message = parse_inbound(payload)
    assert isinstance(message, kind)
    assert {name: getattr(message, name) for name in attributes} == attributes


@pytest.mark.parametrize(
    "payload",
    [
        TEXT.replace("<![CDATA[text]]>", "<![CDATA[hologram]]>"),
        SUBSCRIBE.replace("subscribe", "user_teleported"),
    ],
)
def test_unknown_types_pass_as_unknown_message(payload: str) -> None:
    assert isinstance(parse_inbound(payload), UnknownMessage)


# -- malformed after the gate ------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "<xml><ToUserName>",
        "<xml></xml>",
        "<xml>just text</xml>",
        "<xml><a></b></xml>",
        "<xml></xml><xml></xml>",
        TEXT.replace("<MsgType><![CDATA[text]]></MsgType>", ""),  # missing MsgType
        TEXT.replace("<MsgType><![CDATA[text]]></MsgType>", "<MsgType><a>text</a></MsgType>"),
        TEXT.replace("<MsgType><![CDATA[text]]></MsgType>", "<MsgType/>"),
        TEXT.replace("<MsgType>", "<MsgType>text</MsgType><MsgType>"),
        TEXT.replace("<FromUserName><![CDATA[fromUser]]></FromUserName>", ""),
        TEXT.replace("1348831860", "yesterday"),
        TEXT.replace("1348831860", "9" * 40),
        TEXT.replace("1348831860", str(2**32)),  # past 2106: refused by its range before any read
        TEXT.replace("1348831860", "-1"),
        TEXT.replace("1234567890123456", "not-a-number"),
        TEXT.replace("<![CDATA[this is a test]]>", "<b>bold</b>"),
        TEXT.replace("<Content>", "<Content>a</Content><Content>"),
        LOCATION_EVENT.replace("23.137466", "north"),
        "<xml>&undefined;</xml>",
    ],
)
def test_malformed_messages_are_refused(payload: str) -> None:
    check_xml_text(payload)  # passes the cheap gate …
    with pytest.raises(UnsafeXml) as caught:
        parse_inbound(payload)  # … and is refused by the parser wrapper
    assert caught.value.reason == "malformed"


# -- safe mode: the envelope and the decrypted text both pass the gate ------------


def test_encrypted_envelope_and_plaintext_pass_the_gate() -> None:
    token, app_id = "token", "wx0123456789abcdef"
    crypto = WeChatCrypto(token, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", app_id)
    envelope = crypto.encrypt_message(TEXT, "nonce", "1409304348")
    check_body(envelope.encode())
    encrypted = envelope.split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    signature = hashlib.sha1("".join(sorted([token, "1409304348", "nonce", encrypted])).encode()).hexdigest()
    plaintext = crypto.decrypt_message(envelope, signature, "1409304348", "nonce")
    assert parse_inbound(plaintext).content == "this is a test"


# -- properties --------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    "<xml> </xml> <MsgType> </MsgType> text event <![CDATA[ ]]> <!DOCTYPE <? &lt; & < \x00 \ufeff".split(" ")
)
_TAGS = st.sampled_from(
    "ToUserName FromUserName CreateTime MsgType MsgId Content Event EventKey Latitude Label".split()
)
_VALUES = st.one_of(
    st.sampled_from("text image event subscribe SCAN CLICK LOCATION qrscene_1 12 -1 1e9".split() + ["", "9" * 30]),
    st.text(max_size=8).map(escape),
    st.sampled_from(["<a>x</a>", "<![CDATA[x]]>", "<a/>"]),
)
# Messages that pass the cheap gate, so wechatpy's parsing and field conversion get exercised.
_HEADER = "<ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>1</CreateTime>"
_ELEMENTS = st.tuples(
    st.sampled_from(["", _HEADER, _HEADER + "<MsgType>event</MsgType>", _HEADER + "<MsgType>location</MsgType>"]),
    st.lists(st.tuples(_TAGS, _VALUES).map(lambda element: "<{0}>{1}</{0}>".format(*element)), max_size=8),
).map(lambda parts: ("<xml>" + parts[0] + "".join(parts[1]) + "</xml>").encode())
_BODIES = st.one_of(
    _ELEMENTS,
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: b"<xml>" + tail),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=10)), max_size=30).map(
        lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
    ),
)


@BOUNDED
@given(_BODIES)
def test_arbitrary_bodies_raise_only_unsafe_xml(body: bytes) -> None:
    try:
        check_body(body, max_bytes=1000)
        message = parse_inbound(body.decode("utf-8"))
    except UnsafeXml as refused:
        assert refused.reason in REASONS
        return
    # Whatever passes must not blow up later, when the conversation reads a field.
    assert isinstance(message.source, str) and isinstance(message.time, int)
    for name in type(message)._fields:
        getattr(message, name)


def _xml_char(codepoint: int) -> bool:
    """XML 1.0 ``Char``, minus CR (XML normalises line ends, WeChat sends none)."""
    return codepoint in (0x9, 0xA) or 0x20 <= codepoint <= 0xD7FF or 0xE000 <= codepoint <= 0xFFFD or codepoint > 0xFFFF


_CONTENT = st.text(alphabet=st.characters(exclude_categories=("Cs",)).filter(lambda c: _xml_char(ord(c))), max_size=60)


@BOUNDED
@given(_CONTENT)
def test_any_text_content_round_trips(content: str) -> None:
    body = TEXT.replace("<![CDATA[this is a test]]>", escape(content))
    check_body(body.encode())
    message = parse_inbound(body)
    # xmltodict strips surrounding whitespace and turns an empty element into None.
    assert message.content == (content.strip() or None)
