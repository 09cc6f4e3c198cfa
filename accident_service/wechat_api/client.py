"""The WeChat API as the service uses it: a handful of calls, typed errors.

:class:`GatewayClient` fixes the wechatpy 1.8.18 pitfalls (WECHAT.md §4): the
token URL honours ``WECHAT_API_BASE_URL``, token fetches have a timeout, and
there is no automatic (uncapped) retry. :class:`WeChatApi` is the one small
interface the rest of the service calls. On a token error it refreshes once
through the shared :class:`TokenStore` and retries once; every other decision
(backoff, giving up) belongs to the caller, guided by ``WeChatApiError``'s
``retryable`` / ``permanent`` flags.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException

from accident_service.logs import never_log
from accident_service.wechat_api.tokens import LocalTokenStore, TokenStore, TokenUnavailable

DEFAULT_API_BASE_URL = "https://api.weixin.qq.com/cgi-bin/"
DEFAULT_TIMEOUT_SECONDS = 5.0
QR_MAX_EXPIRE_SECONDS = 2_592_000
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
RETRYABLE_ERRCODES = frozenset({-1, 45009, 45011})
# Retrying these cannot succeed: the recipient, the window or the request itself is wrong.
PERMANENT_ERRCODES = frozenset({
    40003,  # invalid openid (not of this appid)
    40007,  # invalid media_id (expired after 3 days, or never existed)
    40008,  # invalid message type
    40037,  # invalid template_id
    40053,  # invalid action_info (QR scene)
    43004,  # user does not follow the account
    43019,  # user blacklisted the account
    44002,  # empty post data
    45002,  # content too long
    45015,  # outside the 48 h customer-service window
    45047,  # too many customer-service messages in this window
    47001,  # malformed request body
})
_CHUNK_BYTES = 64 * 1024
TOKEN_LIFETIME_SECONDS = 7200  # an access token's life as the platform issues it (expires_in)
#: A token the platform rejects but still hands out as current is replaced by force only once it is this old
#: (GatewayClient.fetch_token_pair): at most 6 forced refreshes an hour in a storm of 40001s, of 20 a day.
FORCED_REFRESH_MIN_AGE_SECONDS = 600

T = TypeVar("T")


class WeChatApiError(Exception):
    """A WeChat API call failed.

    ``errcode`` is the platform's code, or None for transport problems
    (timeouts, connection errors, HTTP errors, unreadable bodies).
    ``retryable``: worth retrying later with backoff (busy, quota, network, 5xx, and
    token errors that survived the one refresh).
    ``permanent``: will never succeed for this request (unsubscribed user,
    closed window, invalid openid...); callers give up or fall back.
    Neither flag set (e.g. 40125 bad AppSecret): a configuration problem;
    callers retry a bounded number of times and surface it.
    ``undelivered``: the call certainly did not deliver: the platform answered that it is busy, over
    its quota or that the token is bad, or no token could be had to call it (a transport error after
    the call was sent may have delivered).
    ``ours``: the service's own part failed (no token could be had from the shared token store), not the
    platform: it tells nothing of how the platform is doing.
    """

    def __init__(self, errcode: int | None, errmsg: str, *, retryable: bool | None = None,
                 permanent: bool | None = None, http_status: int | None = None, ours: bool = False) -> None:
        super().__init__(f"WeChat API error {errcode}: {errmsg}" if errcode is not None
                         else f"WeChat API call failed: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status
        self.retryable = (errcode in RETRYABLE_ERRCODES or errcode in TOKEN_ERRCODES) if retryable is None \
            else retryable
        self.permanent = (errcode in PERMANENT_ERRCODES) if permanent is None else permanent
        self.before_call = False  # set when getting the token failed: the call itself was never made
        self.ours = ours

    @property
    def undelivered(self) -> bool:
        return self.before_call or self.errcode in RETRYABLE_ERRCODES or self.errcode in TOKEN_ERRCODES

    @property
    def is_token_error(self) -> bool:
        return self.errcode in TOKEN_ERRCODES


class MediaTooLarge(WeChatApiError):
    """The media is bigger than the caller's ``max_bytes``; nothing beyond that was read."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(None, f"media larger than {max_bytes} bytes", retryable=False, permanent=True)
        self.max_bytes = max_bytes


@dataclass(frozen=True)
class QrCode:
    ticket: str
    url: str  # the content the QR code encodes
    expire_seconds: int
    image_url: str  # where the platform serves the QR image (showqrcode)


@dataclass(frozen=True)
class Media:
    data: bytes
    content_type: str


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn wechatpy/requests exceptions into WeChatApiError."""
    try:
        yield
    except WeChatApiError:
        raise
    except WeChatClientException as exc:
        if exc.errcode is None:
            status = getattr(exc.response, "status_code", None)
            raise WeChatApiError(None, f"HTTP {status}", http_status=status,
                                 retryable=status is None or status >= 500 or status == 429) from exc
        raise WeChatApiError(int(exc.errcode), str(exc.errmsg)) from exc
    except requests.Timeout as exc:
        raise WeChatApiError(None, f"timeout: {_without_query(str(exc))}", retryable=True) from exc
    except requests.RequestException as exc:
        raise WeChatApiError(None, f"transport error: {_without_query(str(exc))}", retryable=True) from exc
    except TokenUnavailable as exc:
        raise WeChatApiError(None, str(exc), retryable=True, ours=True) from exc


def _answer_field(result: dict[str, Any], name: str, endpoint: str) -> str:
    """The text field ``name`` of a successful answer; an answer without it is the platform's fault, retried as
    an unreadable body is (a fault pass: a KeyError and its traceback at ERROR, every try)."""
    value = result.get(name)
    if not isinstance(value, str) or not value:
        raise WeChatApiError(None, f"{endpoint}: the answer has no {name}", retryable=True)
    return value


_QUERY = re.compile(r"\?[^\s'\")]*")


def _without_query(text: str) -> str:
    """A transport error's text with the query strings of the URLs it quotes cut: urllib3 quotes the call's URL
    (``…?access_token=…``), and the text goes where the log filter does not reach (an inbox row's or a notice's
    ``last_error``, which the desk shows)."""
    return _QUERY.sub("?…", text)


class GatewayClient(WeChatClient):
    """wechatpy's client pointed at ``api_base_url`` for every call, token included.

    Its ``access_token`` comes from the token store, so wechatpy's own API
    helpers (``client.menu.create`` ...) share the one token too.
    """

    def __init__(self, appid: str, secret: str, *, api_base_url: str = DEFAULT_API_BASE_URL,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, token_store: TokenStore | None = None) -> None:
        super().__init__(appid, secret, timeout=timeout, auto_retry=False)
        never_log(secret)
        if not api_base_url.endswith("/"):
            raise ValueError("api_base_url must end with '/' (like https://api.weixin.qq.com/cgi-bin/)")
        self.API_BASE_URL = api_base_url
        self.token_store: TokenStore = token_store or LocalTokenStore()

    @classmethod
    def from_settings(cls, settings: Any, token_store: TokenStore | None = None) -> GatewayClient:
        return cls(settings.WECHAT_APP_ID, settings.WECHAT_APP_SECRET, api_base_url=settings.WECHAT_API_BASE_URL,
                   timeout=settings.WECHAT_API_TIMEOUT_SECONDS, token_store=token_store)

    def fetch_access_token(self, *, force_refresh: bool = False) -> dict[str, Any]:
        """The account's stable token (``stable_token``, normal mode: the same token for every process until
        the platform rotates it). ``force_refresh`` replaces it (the platform allows that 20 times a day)."""
        return self._fetch_access_token(url=self.API_BASE_URL + "stable_token", params={
            "grant_type": "client_credential", "appid": self.appid, "secret": self.secret,
            "force_refresh": force_refresh})

    def _fetch_access_token(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        # wechatpy's version sends no timeout (a stalled token endpoint would hang every caller) and
        # knows only the GET of cgi-bin/token; stable_token is a POST of JSON.
        res = self._http.post(url=url, json=params, timeout=self.timeout)
        try:
            res.raise_for_status()
        except requests.RequestException as exc:
            raise WeChatClientException(None, None, client=self, request=exc.request, response=exc.response) from exc
        result = res.json()
        if result.get("access_token"):  # before anything can fail and log it (the store's write)
            never_log(str(result["access_token"]), token=True)
        if result.get("errcode"):
            raise WeChatClientException(result["errcode"], result.get("errmsg", ""), client=self,
                                        request=res.request, response=res)
        token = _answer_field(result, "access_token", "stable_token")
        expires_in = int(result.get("expires_in", 7200))
        self.session.set(self.access_token_key, token, expires_in)
        self.expires_at = int(time.time()) + expires_in
        return result

    def fetch_token_pair(self, stale: str | None = None) -> tuple[str, int]:
        """The stable token: ``(access_token, expires_in)``. Raises WeChatApiError.

        Normal mode first; only when it hands back the very token the platform just rejected
        (``stale``) is a refresh forced, and not while that token is younger than
        :data:`FORCED_REFRESH_MIN_AGE_SECONDS`: the platform allows 20 forced refreshes a day (WECHAT.md §4),
        and one that rejects a token it has just issued, and still hands out as current, is having a glitch a
        new token would not cure (a fault pass: 40 s of 40001 forced 28 refreshes, and the day's last ones
        answered 45009). That token is handed back and tried once more; a refusal again is the caller's
        retryable error. At most one forced refresh in that time, whichever process asks.
        """
        with _translated_errors():
            result = self.fetch_access_token()
            age = TOKEN_LIFETIME_SECONDS - int(result.get("expires_in", TOKEN_LIFETIME_SECONDS))
            if stale is not None and result["access_token"] == stale and age >= FORCED_REFRESH_MIN_AGE_SECONDS:
                result = self.fetch_access_token(force_refresh=True)
        return result["access_token"], int(result.get("expires_in", TOKEN_LIFETIME_SECONDS))

    def current_token(self, *, stale: str | None = None) -> str:
        """The shared token (refreshed through the store if needed). Raises WeChatApiError."""
        with _translated_errors():
            token = self.token_store.get_token(lambda: self.fetch_token_pair(stale), stale=stale)
        never_log(token, token=True)  # one another process fetched: this one's calls quote it too
        return token

    @property
    def access_token(self) -> str:  # what wechatpy's own API helpers use
        return self.current_token()

    def qrcode_image_url(self, ticket: str) -> str:
        if self.API_BASE_URL == DEFAULT_API_BASE_URL:
            return "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=" + quote(ticket)
        return self.API_BASE_URL + "showqrcode?ticket=" + quote(ticket)


class WeChatApi:
    """The calls the service makes. Every method raises WeChatApiError (see its flags)."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    def send_text(self, openid: str, text: str) -> None:
        """Customer-service text message (48 h window; 45015/45047/43004 are permanent)."""
        self._post_json("message/custom/send", {"touser": openid, "msgtype": "text", "text": {"content": text}})

    def send_template(self, openid: str, template_id: str, data: dict[str, Any], url: str | None = None, *,
                      client_msg_id: str | None = None) -> int | None:
        """Template message; ``data`` values may be plain strings or ``{"value": ...}``. Returns the msgid.

        ``client_msg_id``: the platform drops a repeated send with the same id for 10 minutes
        (wechatpy 1.8.18 has no argument for it, so the body is built here).
        """
        body: dict[str, Any] = {"touser": openid, "template_id": template_id, "data": {
            key: value if isinstance(value, dict) else {"value": str(value)} for key, value in data.items()}}
        if url:
            body["url"] = url
        if client_msg_id:
            body["client_msg_id"] = client_msg_id
        result = self._post_json("message/template/send", body)
        return result.get("msgid")

    def create_join_qrcode(self, scene_str: str, expire_seconds: int) -> QrCode:
        """A temporary QR code whose scan pushes ``scene_str`` (1-64 chars). Raises ValueError on bad input."""
        if not 1 <= len(scene_str) <= 64:
            raise ValueError("scene_str must be 1-64 characters")
        if not 1 <= expire_seconds <= QR_MAX_EXPIRE_SECONDS:
            raise ValueError(f"expire_seconds must be 1..{QR_MAX_EXPIRE_SECONDS}")
        result = self._post_json("qrcode/create", {
            "expire_seconds": int(expire_seconds), "action_name": "QR_STR_SCENE",
            "action_info": {"scene": {"scene_str": scene_str}}})
        ticket = _answer_field(result, "ticket", "qrcode/create")
        return QrCode(ticket=ticket, url=result.get("url", ""),
                      expire_seconds=int(result.get("expire_seconds", expire_seconds)),
                      image_url=self.client.qrcode_image_url(ticket))

    def create_menu(self, menu: dict[str, Any]) -> None:
        """Replace the account's custom menu (``{"button": [...]}``)."""
        self._post_json("menu/create", menu)

    def download_media(self, media_id: str, *, max_bytes: int, timeout: float) -> Media:
        """Download temporary media, reading at most ``max_bytes``.

        ``timeout`` bounds each socket wait and the whole download. Raises
        MediaTooLarge past ``max_bytes``; WeChatApiError for platform errors
        (JSON bodies with HTTP 200, e.g. 40007 expired media) and transport failures.
        """
        def attempt(token: str) -> Media:
            return self._download(media_id, token, max_bytes=max_bytes, timeout=timeout)

        return self._with_token(attempt)

    # -- plumbing ---------------------------------------------------------

    def _with_token(self, call: Callable[[str], T]) -> T:
        token = self._token()
        try:
            return call(token)
        except WeChatApiError as exc:
            if not exc.is_token_error:
                raise
        # Exactly one refresh (shared: every caller passes the same stale token) and one retry.
        return call(self._token(stale=token))

    def _token(self, stale: str | None = None) -> str:
        try:
            return self.client.current_token(stale=stale)
        except WeChatApiError as exc:
            exc.before_call = True
            raise

    def _post_json(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        def attempt(token: str) -> dict[str, Any]:
            with _translated_errors():
                result = self.client.post(endpoint, params={"access_token": token}, data=body)
            if not isinstance(result, dict):
                raise WeChatApiError(None, f"{endpoint}: response is not JSON", retryable=True)
            return result

        return self._with_token(attempt)

    def _download(self, media_id: str, token: str, *, max_bytes: int, timeout: float) -> Media:
        deadline = time.monotonic() + timeout
        with _translated_errors():
            response = self.client._http.get(self.client.API_BASE_URL + "media/get", stream=True, timeout=timeout,
                                             params={"access_token": token, "media_id": media_id})
            with contextlib.closing(response):
                if response.status_code >= 400:
                    raise WeChatApiError(None, f"HTTP {response.status_code}", http_status=response.status_code,
                                         retryable=response.status_code >= 500 or response.status_code == 429)
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise MediaTooLarge(max_bytes)
                data = _read_capped(response, max_bytes, deadline)
                content_type = response.headers.get("Content-Type", "application/octet-stream")
        _raise_for_json_body(data)
        return Media(data=data, content_type=content_type.split(";")[0].strip())


def _read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise MediaTooLarge(max_bytes)
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise WeChatApiError(None, "media download exceeded its timeout", retryable=True)
    return b"".join(chunks)


def _raise_for_json_body(data: bytes) -> None:
    # Errors come back as JSON with HTTP 200 and an arbitrary Content-Type; no image starts with "{".
    if not data.lstrip()[:1] == b"{":
        return
    try:
        result = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return
    if isinstance(result, dict) and result.get("errcode"):
        raise WeChatApiError(int(result["errcode"]), str(result.get("errmsg", "")))
    raise WeChatApiError(None, "media is a JSON document, not a file (a video link?)", permanent=True)


#: Seconds Redis (the shared token) has to connect and to answer each command.
TOKEN_STORE_TIMEOUT_SECONDS = 2.0


def build_wechat_api(runtime: Any) -> WeChatApi:
    """The API client for a Runtime: token shared through Redis if REDIS_URL is set, else the database."""
    from accident_service.wechat_api.tokens import DatabaseTokenStore, RedisTokenStore

    settings = runtime.settings
    store: TokenStore
    if settings.REDIS_URL:
        import redis

        # Bounded: a Redis that takes connections and never answers would hold every send (no timeout by default).
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=TOKEN_STORE_TIMEOUT_SECONDS,
                                      socket_connect_timeout=TOKEN_STORE_TIMEOUT_SECONDS)
        store = RedisTokenStore(client, settings.WECHAT_APP_ID, clock=runtime.clock)
    else:
        store = DatabaseTokenStore(runtime.session_factory, settings.WECHAT_APP_ID, runtime.clock)
    return WeChatApi(GatewayClient.from_settings(settings, token_store=store))
