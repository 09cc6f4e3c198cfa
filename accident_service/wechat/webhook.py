"""The WeChat callback: verify, de-duplicate, persist, answer in milliseconds.

Nothing slow happens here: no download, no image work, no outbound call. The
message is committed to the inbox before the reply; processing happens after
(the in-process pool for latency, the scheduler's sweeper for durability).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import NoReturn

import xmltodict
from flask import Blueprint, Response, abort, current_app, request
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.messages import UnknownMessage
from werkzeug.exceptions import HTTPException

from accident_service import metrics
from accident_service.db import DatabaseUnavailable
from accident_service.settings import Settings
from accident_service.web import EXTENSION_KEY, current_runtime
from accident_service.wechat import inbox, intake_limits, replay
from accident_service.wechat.worker_pool import submit_after_response
from accident_service.wechat.xml_gate import UnsafeXml, check_body, decode_body, parse_inbound

bp = Blueprint("wechat", __name__)
log = logging.getLogger(__name__)
SUCCESS = "success"
#: The URL configured as the account's server address (WECHAT.md §1).
CALLBACK_PATH = "/wechat"


@bp.get(CALLBACK_PATH)
def verify_url():
    settings = current_runtime().settings
    _require_signature(settings)
    return Response(request.args.get("echostr", ""), mimetype="text/plain")


@bp.post(CALLBACK_PATH)
def receive():
    runtime = current_runtime()
    settings = runtime.settings
    encrypted = _is_encrypted_push()
    if not encrypted:
        _require_signature(settings)
    elif request.args.get("signature") is not None:
        # msg_signature (checked on decryption) covers the body as well; a
        # plain signature sent beside it must still be right.
        _require_signature(settings, check_age=False)
    body = _read_capped_body(settings.WECHAT_MAX_BODY_BYTES)
    signed = _signed_body(runtime, body, encrypted=encrypted)
    try:
        xml_text = _decrypt_if_needed(settings, body, encrypted=encrypted)
        message = parse_inbound(xml_text)  # the gate, then wechatpy
    except UnsafeXml as exc:
        if signed is not None:
            _record_signature_alone(runtime, signed)
        log.warning("wechat push refused: %s", exc.reason)
        metrics.INBOUND_MESSAGES.labels("invalid", exc.reason).inc()
        return Response(exc.reason, status=exc.http_status, mimetype="text/plain")
    if isinstance(message, UnknownMessage):
        if signed is not None:
            _record_signature_alone(runtime, signed)
        metrics.INBOUND_MESSAGES.labels("unknown", "ignored").inc()
        return _success()
    now = runtime.clock.now()
    msg_type = inbox.msg_type_of(message)
    limits = current_app.extensions[intake_limits.EXTENSION_KEY]
    turn = limits.take_turn(msg_type, str(message.source), now)
    not_before = turn.not_before if turn is not None else None
    row_id = None
    try:
        row_id = inbox.store_inbound(runtime, message, xml_text, now, not_before=not_before, signed=signed)
    except replay.SignatureReused:
        _refuse_reused_signature()
    finally:
        if not row_id:  # a retry of a push stored already, a reused signature, the database down: not counted
            limits.give_back(turn)
    metrics.INBOUND_MESSAGES.labels(msg_type, "duplicate" if not row_id else "deferred" if not_before
                                    else "stored").inc()
    if row_id and not not_before and settings.INBOX_PROCESS_INLINE:
        submit_after_response(runtime, row_id, msg_type, str(message.source))
    return _success()


def init_app(app) -> None:
    """The blueprint, every request to it counted and timed, and the per-sender intake limits of this app."""
    app.register_blueprint(bp)
    app.wsgi_app = counted(app.wsgi_app)
    app.extensions[intake_limits.EXTENSION_KEY] = intake_limits.IntakeLimits(app.extensions[EXTENSION_KEY].settings)


@bp.errorhandler(HTTPException)
def _refused(exc: HTTPException):
    # Plain text, as the platform reads it, and a line in the log: every push refused with 403 is what a wrong
    # WECHAT_TOKEN (or an old timestamp: a clock far off) looks like, which the metrics alone did not tell.
    if exc.code is None or exc.code >= 500:
        return exc  # a bug's 500, logged with its traceback by Flask: not a refusal
    log.warning("wechat request refused: %s %s", exc.code, exc.name)
    return Response(exc.name, status=exc.code, mimetype="text/plain")


@bp.errorhandler(DatabaseUnavailable)
def _database_unavailable(exc: DatabaseUnavailable):
    # Every database call here goes through runtime.single_statement (or runtime.transaction), which raise this.
    # Plain text, as the platform reads it; a 503 makes it push again, and the dedupe key
    # and the one-body-per-signature record let the same push through then.
    log.warning("wechat push not stored: database unavailable")
    return Response("database unavailable", status=503, mimetype="text/plain")


#: The platform's methods, each counted under its name; any other under "other": the callback is public, and a label
#: per method a caller makes up would be a series each, kept by every worker and scraped for good (acceptance pass).
_COUNTED_METHODS = frozenset({"GET", "POST"})


def counted(wsgi_app):
    """``wsgi_app`` with every request counted (method, status) and timed, the framework's own answers included.

    Around the app rather than in its request hooks: two hooks cost a push more than the work they do.
    """

    def app(environ, start_response):
        started = time.perf_counter()

        def start(status: str, headers, exc_info=None):
            method = environ.get("REQUEST_METHOD", "")
            metrics.WEBHOOK_REQUESTS.labels(method if method in _COUNTED_METHODS else "other",
                                            status.partition(" ")[0]).inc()
            return start_response(status, headers, exc_info)

        try:
            return wsgi_app(environ, start)
        finally:
            metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)

    return app


def _success() -> Response:
    return Response(SUCCESS, mimetype="text/plain")


def _is_encrypted_push() -> bool:
    return request.args.get("encrypt_type", "raw") == "aes"


def _require_signature(settings: Settings, *, check_age: bool = True) -> None:
    """The plain signature; its timestamp must be recent, as the signature does not cover the body.

    An old, correctly signed encrypted push is only a duplicate (the inbox's
    dedupe key catches it), so safe mode skips the age check.
    """
    args = request.args
    if not signature_matches(args.get("signature", ""), settings.WECHAT_TOKEN, args.get("timestamp", ""),
                             args.get("nonce", "")):
        abort(403)
    tolerance = settings.WECHAT_TIMESTAMP_TOLERANCE_SECONDS
    if tolerance and check_age:
        try:
            skew = abs(time.time() - int(args.get("timestamp", "")))  # wall clock, like the platform's
        except ValueError:
            abort(403)
        if skew > tolerance:
            abort(403)


def _signed_body(runtime, body: bytes, *, encrypted: bool) -> replay.SignedBody | None:
    """The (timestamp, nonce) to record with this body: plain mode with the age check on only.

    The plain signature does not cover the body: each signed query may carry one body only.
    """
    if encrypted or not runtime.settings.WECHAT_TIMESTAMP_TOLERANCE_SECONDS:
        return None
    try:
        return replay.SignedBody.of(timestamp=request.args.get("timestamp", ""), nonce=request.args.get("nonce", ""),
                                    body=body, now=runtime.clock.now())
    except ValueError:
        abort(400)


def _record_signature_alone(runtime, signed: replay.SignedBody) -> None:
    """A push refused or ignored still uses up its signature; 403 if another body came under it first."""
    if not runtime.single_statement(lambda connection: replay.first_body_for_signature(connection, signed)):
        _refuse_reused_signature()


def _refuse_reused_signature() -> NoReturn:
    log.warning("wechat push refused: another body under a signature already used")
    metrics.INBOUND_MESSAGES.labels("invalid", "replayed_signature").inc()
    abort(403)


def signature_matches(signature: str, *parts: str) -> bool:
    """WeChat's SHA1 over the sorted parts, compared in constant time."""
    expected = hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()
    return hmac.compare_digest(expected, signature.lower().encode("ascii", "replace").decode())


def _read_capped_body(max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        abort(413)
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        abort(413)
    return body


def _envelope_ciphertext(body: bytes) -> str:
    try:
        return str(xmltodict.parse(body)["xml"]["Encrypt"])
    except Exception:  # not an envelope: refused as malformed, never a 500
        raise UnsafeXml("malformed") from None


def _decrypt_if_needed(settings: Settings, body: bytes, *, encrypted: bool) -> str:
    """The push's XML text: the body itself in plain mode, the decrypted message in safe mode.

    Raises UnsafeXml for a body the gate refuses: the plain text is gated by
    parse_inbound, the envelope here, before wechatpy's parser sees it.
    """
    if not encrypted:
        text = decode_body(body, max_bytes=settings.WECHAT_MAX_BODY_BYTES)
        if settings.WECHAT_REQUIRE_ENCRYPTION:
            abort(403)  # the plain signature does not cover the body
        return text
    check_body(body, max_bytes=settings.WECHAT_MAX_BODY_BYTES)
    if not settings.WECHAT_ENCODING_AES_KEY:
        abort(400)  # safe mode is not configured here
    encrypted = _envelope_ciphertext(body)
    if not signature_matches(request.args.get("msg_signature", ""), settings.WECHAT_TOKEN,
                             request.args.get("timestamp", ""), request.args.get("nonce", ""), encrypted):
        abort(403)
    crypto = WeChatCrypto(settings.WECHAT_TOKEN, settings.WECHAT_ENCODING_AES_KEY, settings.WECHAT_APP_ID)
    try:
        return crypto.decrypt_message(body, request.args.get("msg_signature", ""),
                                      request.args.get("timestamp", ""), request.args.get("nonce", ""))
    except InvalidSignatureException:
        abort(403)
    except InvalidAppIdException:
        abort(403)
    except Exception:  # bad base64, padding, XML inside the envelope: never a 500
        raise UnsafeXml("malformed") from None
