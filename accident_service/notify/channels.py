"""The ways a notice reaches a person, behind one small interface.

A channel sends one rendered message to one address and either returns (the
platform took it) or raises :class:`DeliveryError`, which says whether trying
again later may help (``retryable``), never can (``permanent``), or whether
another channel should carry it now (``reroute``: the person's WeChat
allowance is spent or closed). Which channel a message takes is the
dispatcher's decision (``notify.dispatch``), not the channel's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class DeliveryError(Exception):
    """A channel could not deliver.

    ``code`` is the provider's error code (WeChat errcode, Tencent Cloud error
    code) or None for transport problems. ``retryable``: worth retrying with
    backoff (busy, quota, network). ``permanent``: this message will never go
    this way. ``reroute``: this channel cannot carry it now, another may (the
    message is not failed for that).
    """

    def __init__(self, channel: str, message: str, *, code: str | int | None = None, retryable: bool = False,
                 permanent: bool = False, reroute: bool = False) -> None:
        super().__init__(f"{channel}: {message}")
        self.channel = channel
        self.code = code
        self.retryable = retryable
        self.permanent = permanent
        self.reroute = reroute


@dataclass(frozen=True)
class Rendered:
    """One message in the recipient's language, in every shape a channel may need."""

    text: str  # a WeChat customer-service text
    template_data: dict[str, Any] = field(default_factory=dict)  # keyword -> {"value": str}, each ≤ 20 characters
    sms_params: tuple[str, ...] = ()  # the SMS template's parameters, in order


class Channel(Protocol):
    name: str

    def send(self, address: str, rendered: Rendered, *, dedupe_key: str) -> None:
        """Deliver ``rendered`` to ``address`` (an openid, a mobile number).

        ``dedupe_key`` lets a provider that supports it drop a repeated send
        (WeChat's ``client_msg_id``). Raises DeliveryError.
        """
