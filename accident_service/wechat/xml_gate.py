"""The gate every inbound WeChat body passes before any XML parser sees it.

WeChat pushes small, flat ``<xml>…</xml>`` documents, UTF-8, without DOCTYPE.
Anything else is an attack or garbage. DOCTYPEs and entity declarations are
refused by defusedxml's handlers on an expat parser, not by trusting the
configuration of the parser wechatpy uses: wechatpy accepts any
``xmltodict>=0.11``, and 0.13 silently drops entity content instead of
refusing it (WECHAT.md §8). Both are expat, so a document wechatpy could parse
to its end has been through defusedxml's handlers to its end first.

Use in the webhook::

    check_body(request.get_data())           # raw POST body, before decrypting
    xml_text = crypto.decrypt_message(...)    # safe mode only
    message = parse_inbound(xml_text)         # re-checks the (decrypted) text
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from xml.parsers import expat
from xml.parsers.expat import ExpatError

import xmltodict
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser
from wechatpy import parse_message
from wechatpy.fields import DateTimeField, FloatField, IntegerField, StringField
from wechatpy.messages import BaseMessage

from accident_service.errors import ServiceError
from accident_service.wechat import file_message  # noqa: F401  (registers MsgType "file" with wechatpy)

MAX_BODY_BYTES = 65536
MAX_ACCOUNT_ID_CHARS = 64  # openids are 28 characters, original ids (gh_...) 15
REASONS = frozenset({"too_large", "encoding", "doctype", "entity", "processing_instruction", "not_xml", "malformed"})

# The XML declaration is only legal at the very start; its pseudo-attributes
# never contain "?", "<" or ">".
_DECLARATION = re.compile(r"<\?xml(\s[^<>?]*)?\?>")
_DECLARED_ENCODING = re.compile(r"""encoding\s*=\s*["']([^"']*)["']""")
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_CDATA_OPEN, _CDATA_CLOSE = "<![CDATA[", "]]>"

# Everything wechatpy/xmltodict/expat raise on hostile or odd-shaped input:
# ValueError covers xmltodict's refused entities and wechatpy's int()/base64
# field conversions; KeyError a missing MsgType or root; TypeError and
# AttributeError text or lists where wechatpy expects a dict or a string.
_PARSE_ERRORS = (
    ExpatError,
    xmltodict.ParsingInterrupted,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    OSError,
)
# Field kinds wechatpy converts lazily, and the type each must come out as.
_FIELD_TYPES: tuple[tuple[type, type], ...] = (
    (DateTimeField, datetime),
    (FloatField, float),
    (IntegerField, int),
    (StringField, str),
)


class UnsafeXml(ServiceError):
    """An inbound body or XML text was refused; ``reason`` is one of :data:`REASONS`."""

    code = "unsafe_xml"
    http_status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused inbound XML: {reason}", reason=reason)
        self.reason = reason
        if reason == "too_large":
            self.http_status = 413


def check_body(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> None:
    """Refuse a raw POST body unless it is a small, plain UTF-8 ``<xml>`` document.

    Raises :class:`UnsafeXml` with reason ``too_large`` (over ``max_bytes``),
    ``encoding`` (NUL byte or not UTF-8, which also shuts out UTF-16/32
    disguises of the checks below) or any reason of :func:`check_xml_text`.
    """
    check_xml_text(decode_body(body, max_bytes=max_bytes), max_bytes=max_bytes)


def decode_body(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> str:
    """The raw body as text, refused (``too_large``, ``encoding``) unless small, NUL-free UTF-8.

    For a body that goes straight to :func:`parse_inbound` (plain mode), which
    gates the text itself: checking it here too would run the parser twice.
    """
    if len(body) > max_bytes:
        raise UnsafeXml("too_large")
    if b"\x00" in body:
        raise UnsafeXml("encoding")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeXml("encoding") from None


def check_xml_text(text: str, *, max_bytes: int = MAX_BODY_BYTES) -> None:
    """Refuse XML text (e.g. decrypted plaintext) that WeChat would never send.

    Raises :class:`UnsafeXml` with reason ``too_large``, ``encoding`` (NUL,
    unpaired surrogate, or a declaration naming a non-UTF-8 encoding),
    ``doctype``, ``entity``, ``processing_instruction`` (any ``<?`` other than
    a leading XML declaration) or ``not_xml`` (the document, after an optional
    BOM, declaration and whitespace, does not start with ``<xml>``).
    Text inside CDATA sections is ignored by the markup checks, so a driver
    typing "<?" or "<!DOCTYPE" in a message is not refused.
    """
    if len(text) > max_bytes:
        raise UnsafeXml("too_large")
    if "\x00" in text:
        raise UnsafeXml("encoding")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeXml("encoding") from None
    if size > max_bytes:
        raise UnsafeXml("too_large")

    _refuse_dtd_and_entities(text)

    rest = text.removeprefix("\ufeff")
    declaration = _DECLARATION.match(rest)
    if declaration is not None:
        declared = _DECLARED_ENCODING.search(declaration.group(1) or "")
        if declared is not None and declared.group(1).lower() not in _UTF8_NAMES:
            raise UnsafeXml("encoding")
        rest = rest[declaration.end() :]
    if "<?" in _outside_cdata(rest):
        raise UnsafeXml("processing_instruction")
    if not rest.lstrip().startswith("<xml>"):
        raise UnsafeXml("not_xml")


# defusedxml's handlers, which only raise, taken once from its ElementTree parser: they go on a bare expat
# parser per document, as ElementTree's pure-Python parser would call back into Python for every tag and
# text of a push (four fifths of the gate's time, measured).
_DEFUSED = DefusedXMLParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)


def _refuse_dtd_and_entities(text: str) -> None:
    """Run expat over ``text`` with defusedxml's handlers; a DOCTYPE or an entity declaration raises.

    A document that is merely malformed passes here: :func:`parse_inbound`
    refuses it (``malformed``), and an entity declaration outside a DOCTYPE is
    such a document (expat's syntax error), which the ``not_xml`` check also refuses.
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _DEFUSED.defused_start_doctype_decl
    parser.EntityDeclHandler = _DEFUSED.defused_entity_decl
    parser.UnparsedEntityDeclHandler = _DEFUSED.defused_unparsed_entity_decl
    parser.ExternalEntityRefHandler = _DEFUSED.defused_external_entity_ref_handler
    try:
        parser.Parse(text, True)
    except DTDForbidden:
        raise UnsafeXml("doctype") from None
    except (EntitiesForbidden, ExternalReferenceForbidden):
        raise UnsafeXml("entity") from None
    except ExpatError:
        pass


def parse_inbound(xml_text: str) -> BaseMessage:
    """Check ``xml_text`` with :func:`check_xml_text`, then parse it with wechatpy.

    Returns the wechatpy message or event; an unknown ``MsgType``/``Event``
    comes back as ``wechatpy.messages.UnknownMessage`` for the caller to
    ignore. Raises :class:`UnsafeXml` (reason ``malformed`` for XML that does
    not parse, lacks ``MsgType``, ``FromUserName``, ``ToUserName`` or a numeric
    ``CreateTime``, has a field of the wrong shape (e.g. nested or repeated
    where wechatpy expects text), a ``FromUserName``/``ToUserName`` over 64
    characters or a ``MsgId`` outside 0..2**64-1).
    """
    check_xml_text(xml_text)
    try:
        message = parse_message(xml_text)
        _require_sane_fields(message)
    except _PARSE_ERRORS:
        raise UnsafeXml("malformed") from None
    return message


def _require_sane_fields(message: BaseMessage | None) -> None:
    """Check every declared field now, so the caller never meets a bad one later.

    wechatpy converts fields lazily on attribute access; a repeated element
    arrives as a list and a nested one as a dict, which the conversation code
    must not have to expect. Each field is checked as :func:`_field_kinds` says:
    a plain string on its parsed text, a Unix time by its range, any other by
    running wechatpy's conversion once. Raises ValueError (or a conversion error).
    """
    if message is None:
        raise ValueError("empty message")
    parsed = message._data
    values = {}
    for name, element, expected, check in _field_kinds(type(message)):
        text = parsed.get(element)
        if check is _AS_PARSED and (text is None or isinstance(text, str)):
            values[name] = text  # what wechatpy's conversion gives back: no need to run it
            continue
        if check is _UNIX_TIME and isinstance(text, str):
            # wechatpy's conversion of a Unix time in 32 bits (the platform's CreateTime) cannot fail, and running
            # it costs a push more than the rest of these checks (a time zone lookup).
            if not 0 <= int(text) < 2**32:
                raise ValueError(f"field {name} out of range")
            continue
        value = values[name] = getattr(message, name)  # each converted once: wechatpy converts on every read
        if expected is not None and value is not None and not isinstance(value, expected):
            raise ValueError(f"field {name} has the wrong shape")
    for required in ("source", "target"):
        value = values.get(required)
        if not isinstance(value, str) or not value:
            raise ValueError(f"missing {required}")
        if len(value) > MAX_ACCOUNT_ID_CHARS:  # the inbox keeps openids in 64 characters
            raise ValueError(f"{required} too long")
    if not isinstance(values.get("time"), int):
        raise ValueError("missing CreateTime")
    if not 0 <= values.get("id", 0) < 2**64:  # MsgId is a 64-bit number; the dedupe key column is 200 characters
        raise ValueError("MsgId out of range")


# How a field is checked: its parsed text as it is (a plain string), a Unix time's range, or wechatpy's conversion.
_AS_PARSED, _UNIX_TIME, _CONVERTED = "as parsed", "unix time", "converted"


@functools.cache
def _field_kinds(message_class: type[BaseMessage]) -> tuple[tuple[str, str, type | None, str], ...]:
    """Each declared field of a message class: its attribute, its element, the type its value must come out as
    (None: any) and how it is checked, found once per class: every push is checked, and matching field kinds per
    push cost more than reading the fields."""
    return tuple((name, field.name, next((kind for cls, kind in _FIELD_TYPES if isinstance(field, cls)), None),
                  _AS_PARSED if _converts_as(field, StringField) and field.default is None
                  else _UNIX_TIME if _converts_as(field, DateTimeField) else _CONVERTED)
                 for name, field in message_class._fields.items())


def _converts_as(field, kind: type) -> bool:
    """``field`` is a ``kind`` whose conversion is ``kind``'s own."""
    return isinstance(field, kind) and type(field).converter is kind.converter


def _outside_cdata(text: str) -> str:
    """Return ``text`` with the contents of complete CDATA sections removed.

    A linear scan rather than a regex: a body full of unterminated CDATA
    openers must not cost quadratic time. An unterminated section is kept
    as-is, so its content is still checked.
    """
    kept: list[str] = []
    position = 0
    while True:
        start = text.find(_CDATA_OPEN, position)
        if start < 0:
            break
        end = text.find(_CDATA_CLOSE, start + len(_CDATA_OPEN))
        if end < 0:
            break
        kept.append(text[position:start])
        position = end + len(_CDATA_CLOSE)
    kept.append(text[position:])
    return "".join(kept)
