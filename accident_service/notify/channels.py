"""The ways a notice reaches a person, behind one small interface.

A channel sends one rendered message to one address and either returns (the
platform took it) or raises :class:`DeliveryError`, which says whether trying
again later may help (``retryable``), never can (``permanent``), or whether
another channel should carry it now (``reroute``: the person's WeChat
allowance is spent or closed). Which channel a message takes is the
dispatcher's decision (``notify.dispatch``), not the channel's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from accident_service.cases.facts import NOTICE_KINDS
from accident_service.outbox import REPLY_KIND
from accident_service.wechat_api.client import WeChatApi, WeChatApiError


class DeliveryError(Exception):
    """A channel could not deliver.

    ``code`` is the provider's error code (WeChat errcode, Tencent Cloud error
    code) or None for transport problems. ``retryable``: worth retrying with
    backoff (busy, quota, network). ``permanent``: this message will never go
    this way. ``reroute``: this channel cannot carry it now, another may (the
    message is not failed for that). ``undelivered``: it certainly did not reach
    the person (the provider said so, or was never called). ``provider_fault``:
    the provider failed, not our own code.
    """

    def __init__(self, channel: str, message: str, *, code: str | int | None = None, retryable: bool = False,
                 permanent: bool = False, reroute: bool = False, undelivered: bool = False,
                 provider_fault: bool = True) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel
        self.code = code
        self.retryable = retryable
        self.permanent = permanent
        self.reroute = reroute
        self.undelivered = undelivered
        self.provider_fault = provider_fault

    @property
    def unanswered(self) -> bool:
        """No answer came (a timeout, a dropped connection, a gateway's error status): the provider may have taken
        it. An answer with an error code, whatever the code, says it took nothing."""
        return self.code is None and not self.undelivered


@dataclass(frozen=True)
class Rendered:
    """One message in the recipient's language, in every shape a channel may need."""

    text: str  # a WeChat customer-service text
    template_data: dict[str, Any] = field(default_factory=dict)  # keyword -> {"value": str}, each ≤ 20 characters
    sms_params: tuple[str, ...] = ()  # the SMS template's parameters, in order


class Channel(Protocol):
    name: str

    def send(self, address: str, rendered: Rendered, *, dedupe_key: str) -> int | None:
        """Deliver ``rendered`` to ``address`` (an openid, a mobile number).

        ``dedupe_key`` lets a provider that supports it drop a repeated send
        (WeChat's ``client_msg_id``). Returns the provider's id for the message
        where a later report of its fate names it (a template's msgid), else
        None. Raises DeliveryError.
        """


# WeChat's answers that mean "not this way now, maybe another way": the allowance is spent (45047) or
# closed (45015), or the person does not follow the account (43004; an SMS may still reach them).
REROUTE_ERRCODES = frozenset({43004, 45015, 45047})
#: The SMS channel's name (notify.sms; here so that naming it does not load Tencent's SDK).
SMS_CHANNEL = "sms"


class WeChatText:
    """A customer-service text (message/custom/send): limited by the person's allowance (notify.allowance)."""

    name = "wechat"

    def __init__(self, api: WeChatApi) -> None:
        self.api = api

    def send(self, address: str, rendered: Rendered, *, dedupe_key: str) -> None:
        with _as_delivery_error(self.name):
            self.api.send_text(address, rendered.text)
        return None


class WeChatTemplate:
    """A template message (message/template/send) with ``client_msg_id``: the platform drops a repeat."""

    name = "template"
    #: How long the platform drops a repeated ``client_msg_id`` (WECHAT.md §5), less a minute for the clocks of
    #: the process that sent it first and of the one sending it again.
    repeats_dropped_for = timedelta(minutes=10) - timedelta(minutes=1)

    def __init__(self, api: WeChatApi, template_id: str) -> None:
        self.api = api
        self.template_id = template_id

    def send(self, address: str, rendered: Rendered, *, dedupe_key: str) -> int | None:
        """Returns the platform's msgid: the template's result event names it (notify.dispatch.template_result)."""
        with _as_delivery_error(self.name):
            msgid = self.api.send_template(address, self.template_id, rendered.template_data,
                                           client_msg_id=dedupe_key)
        return msgid if isinstance(msgid, int) else None  # what else came back names nothing to match


#: Who carries each channel: a delivery by one of a provider's channels shows that provider works again.
PROVIDER_OF = {WeChatText.name: "wechat", WeChatTemplate.name: "wechat", SMS_CHANNEL: "sms"}

#: The (channel, kind) pairs a send is counted under (metrics.SENDS), whose series start at 0: a conversation's
#: replies go as customer-service texts only, a notice about a case by whichever channel reaches the person.
SEND_SERIES: tuple[tuple[str, str], ...] = ((WeChatText.name, REPLY_KIND), *(
    (channel, kind) for channel in (WeChatText.name, WeChatTemplate.name, SMS_CHANNEL) for kind in NOTICE_KINDS))


@contextlib.contextmanager
def _as_delivery_error(channel: str) -> Iterator[None]:
    """WeChatApiError → DeliveryError, keeping the client's judgement of what is worth retrying."""
    try:
        yield
    except WeChatApiError as exc:
        reroute = exc.errcode in REROUTE_ERRCODES
        raise DeliveryError(channel, exc.errmsg, code=exc.errcode, reroute=reroute, undelivered=exc.undelivered,
                            permanent=exc.permanent and not reroute,
                            # neither flag: a configuration problem, retried a bounded number of times
                            retryable=exc.retryable or not (exc.permanent or reroute),
                            provider_fault=not exc.ours) from exc
