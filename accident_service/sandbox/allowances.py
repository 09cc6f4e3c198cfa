"""Who follows the account, and how many customer-service messages each follower may receive now.

The rules are the platform's since 2023-06-12 (WECHAT.md §5, table under
"Customer service"):

* a message from the user (text, image, voice, video, shortvideo, location,
  link, file) allows 5 sends within 48 hours;
* a menu click (CLICK, scancode_push, scancode_waitmsg), a follow (subscribe,
  with or without a QR scene) or a QR scan by a follower (SCAN) allows 3 sends
  within 1 minute;
* allowances do not add up: each action replaces the previous allowance with
  its own count and window, starting at the action;
* beyond them the platform answers 45047 (count spent, window still open) or
  45015 (window closed, or the user never acted);
* a user who does not follow (never did, or unsubscribed) gets 43004, for
  customer-service and template messages alike (issue 12; template messages are
  not limited by the allowance, WECHAT.md §5 "Template").

Other events (LOCATION reports, VIEW, TEMPLATESENDJOBFINISH, the other menu
events) allow nothing and change nothing; unsubscribe ends following and the
allowance. The platform retries a push it got no answer to (WECHAT.md §2): a
repeat of an action already counted (same MsgId, or for events the same
FromUserName + CreateTime + Event) is the same action, not a new one.

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link", "file"})
SHORT_WINDOW_EVENTS = frozenset({"click", "scancode_push", "scancode_waitmsg", "subscribe", "scan"})
REMEMBERED_ACTIONS = 10_000  # enough to recognise the platform's retries (seconds apart) in any test run


@dataclass(frozen=True)
class Grant:
    """What one kind of action allows: ``sends`` customer-service messages within ``seconds``."""

    sends: int
    seconds: float


MESSAGE_GRANT = Grant(sends=5, seconds=48 * 3600)
SHORT_GRANT = Grant(sends=3, seconds=60)


def grant_for(msg_type: str, event: str | None = None) -> Grant | None:
    """The allowance a push of ``msg_type`` (and ``event``, for MsgType event) gives, or None."""
    msg_type = msg_type.lower()
    if msg_type in MESSAGE_TYPES:
        return MESSAGE_GRANT
    if msg_type == "event" and (event or "").lower() in SHORT_WINDOW_EVENTS:
        return SHORT_GRANT
    return None


@dataclass(frozen=True)
class Allowance:
    """A user's customer-service allowance as of now.

    ``remaining`` is 0 once the window has closed; ``window_ends_at`` is on the
    emulator's clock (None: the user never acted, or unsubscribed since);
    ``granted_by`` names the action that opened the window ("text", "click"...).
    """

    following: bool
    remaining: int
    window_ends_at: float | None
    granted_by: str | None

    @property
    def open(self) -> bool:
        return self.remaining > 0


@dataclass
class _Window:
    remaining: int
    ends_at: float
    granted_by: str


class Audience:
    """Following state and customer-service allowances per openid, on an injectable clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._following: set[str] = set()
        self._windows: dict[str, _Window] = {}
        self._counted: OrderedDict[Hashable, None] = OrderedDict()
        self.actions: Counter[str] = Counter()  # counted actions by kind ("text", "click"...), for tests

    def record_action(self, openid: str, msg_type: str, event: str | None = None,
                      action_key: Hashable | None = None) -> bool:
        """Apply one user action; returns False when it is a repeat of ``action_key`` or grants nothing."""
        if action_key is not None:
            if action_key in self._counted:
                return False
            self._counted[action_key] = None
            while len(self._counted) > REMEMBERED_ACTIONS:
                self._counted.popitem(last=False)
        kind = (event if msg_type.lower() == "event" else msg_type) or msg_type
        kind = kind.lower()
        if kind == "unsubscribe":
            self.unfollow(openid)
            return True
        grant = grant_for(msg_type, event)
        if grant is None:
            return False
        self._following.add(openid)  # the platform takes messages, clicks and scans from followers only
        self._windows[openid] = _Window(grant.sends, self._clock() + grant.seconds, kind)
        self.actions[kind] += 1
        return True

    def follow(self, openid: str) -> None:
        """The user follows (e.g. since before the test) without having done anything: no allowance."""
        self._following.add(openid)

    def unfollow(self, openid: str) -> None:
        self._following.discard(openid)
        self._windows.pop(openid, None)

    def close_window(self, openid: str) -> None:
        window = self._windows.get(openid)
        if window is not None:
            window.remaining = 0
            window.ends_at = min(window.ends_at, self._clock())

    def follows(self, openid: str) -> bool:
        return openid in self._following

    def charge_customer_service(self, openid: str) -> int | None:
        """Take one send from the allowance; returns the platform's errcode instead when none is left."""
        if openid not in self._following:
            return 43004
        window = self._windows.get(openid)
        if window is None or self._clock() >= window.ends_at:
            return 45015
        if window.remaining <= 0:
            return 45047
        window.remaining -= 1
        return None

    def allowance(self, openid: str) -> Allowance:
        following = openid in self._following
        window = self._windows.get(openid)
        if window is None:
            return Allowance(following, 0, None, None)
        remaining = window.remaining if self._clock() < window.ends_at else 0
        return Allowance(following, remaining, window.ends_at, window.granted_by)
