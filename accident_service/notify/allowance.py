"""What the platform lets us send each person as customer-service messages, known before we send.

Since 2023-06-12 (WECHAT.md §5) a person's action grants an allowance: a
message allows 5 sends within 48 hours; a menu click, a follow or a QR scan
allows 3 within a minute. A new action replaces the allowance, it does not
add to it. Beyond it the platform answers 45047 (count spent) or 45015
(window closed). The ledger is fed by the inbox (:func:`record_action`, in
the transaction that processes the person's message) and by each send
(:func:`spend`), so the dispatcher can choose another channel instead of
spending a send on a refusal.

The windows are measured from when we received the action, which is a little
after the person acted: a margin keeps us inside the platform's window.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, case, null, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service.db import is_postgres, run_prebuilt
from accident_service.models import WechatAllowance


@dataclass(frozen=True)
class Grant:
    sends: int
    window: timedelta
    margin: timedelta  # taken off the window: our clock starts when the push reached us


MESSAGE = Grant(5, timedelta(hours=48), timedelta(minutes=10))
SHORT = Grant(3, timedelta(minutes=1), timedelta(seconds=15))
# What each kind of action grants; other events (location reports, link views, delivery receipts) grant nothing.
GRANTS: dict[str, Grant] = {"message": MESSAGE, "click": SHORT, "subscribe": SHORT, "scan": SHORT}
_TABLE = WechatAllowance.__table__
_MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link", "file"})
_SHORT_EVENTS = {"click": "click", "scancode_push": "click", "scancode_waitmsg": "click",
                 "subscribe": "subscribe", "subscribe_scan": "subscribe", "scan": "scan"}


def action_of(message) -> str | None:
    """The kind of action a parsed push is ("message", "click", "subscribe", "scan"), "unsubscribe", or None."""
    kind = getattr(message, "type", "")
    if kind in _MESSAGE_TYPES:
        return "message"
    if kind == "event":
        event = str(getattr(message, "event", "") or "")
        return "unsubscribe" if event == "unsubscribe" else _SHORT_EVENTS.get(event)
    return None


def record_action(session: Session, openid: str, action: str | None, at: datetime) -> bool:
    """Note what the person did at ``at``; True when it granted a (new) allowance.

    A later action replaces the allowance; an older one (a retried push) changes nothing.
    """
    if action is None:
        return False
    if action == "unsubscribe":
        session.execute(update(WechatAllowance).where(WechatAllowance.openid == openid)
                        .values(following=False, sends_left=0, updated_at=at))
        return False
    grant = GRANTS[action]
    params = {"openid": openid, "granted_by": action, "granted_at": at, "expires_at": at + grant.window - grant.margin,
              "sends_left": grant.sends}
    # A row back when written, none when skipped: the rowcount of an INSERT is not one SQLAlchemy keeps for
    # psycopg (it read -1 there, so on PostgreSQL no action ever released what waited for the person).
    return run_prebuilt(session, _grant_statement(is_postgres(session)), params).first() is not None


@functools.cache
def _grant_statement(postgres: bool):
    """The upsert of a grant, built once: every message a driver sends runs it, and building an upsert cost
    more CPU than running it. The grant replaces the row's unless the row's is newer (a retried push)."""
    columns = _TABLE.c
    at = bindparam("granted_at", type_=columns.granted_at.type)
    insert = (postgresql.insert if postgres else sqlite.insert)(_TABLE).values(
        {"following": true(), "granted_at": at, "updated_at": at, "templates_failed_at": null(),
         **{name: bindparam(name, type_=columns[name].type) for name in ("openid", "granted_by", "expires_at",
                                                                         "sends_left")}})
    replaced = ("following", "granted_by", "granted_at", "expires_at", "sends_left", "updated_at")
    # The person acting again lets a template be tried again (templates_failed), unless the platform said one
    # failed after this action (a message processed late: a photo that waited out an outage).
    failed_since = case((columns.templates_failed_at > insert.excluded.granted_at, columns.templates_failed_at),
                        else_=null())
    return insert.on_conflict_do_update(
        index_elements=["openid"],
        set_={**{name: insert.excluded[name] for name in replaced}, "templates_failed_at": failed_since},
        where=columns.granted_at <= insert.excluded.granted_at).returning(columns.openid)


def can_send(session: Session, openid: str, now: datetime) -> bool:
    """Whether a customer-service message to ``openid`` is within what the platform allows now."""
    row = session.get(WechatAllowance, openid)
    return row is not None and row.following and row.expires_at > now and row.sends_left > 0


@dataclass(frozen=True)
class Taken:
    """A send taken from the allowance an action granted (the one granted at ``granted_at``, of ``sends``)."""

    openid: str
    granted_at: datetime
    sends: int


def spend(session: Session, openid: str, now: datetime) -> Taken | None:
    """Take one send of the allowance (before sending); None when none is left (another worker took it)."""
    taken = run_prebuilt(session, _spend_statement(), {"recipient": openid, "now": now}).first()
    if taken is None:
        return None
    grant = GRANTS.get(taken.granted_by)
    return Taken(openid, taken.granted_at, grant.sends if grant else 0)


@functools.cache
def _spend_statement():
    """Built once, like the grant's: every customer-service message sent runs it."""
    columns = _TABLE.c
    now = bindparam("now", type_=columns.expires_at.type)
    return (update(_TABLE)
            .where(columns.openid == bindparam("recipient", type_=columns.openid.type), columns.sends_left > 0,
                   columns.expires_at > now, columns.following.is_(True))
            .values(sends_left=columns.sends_left - 1, updated_at=now)
            .returning(columns.granted_at, columns.granted_by))


def refund(session: Session, taken: Taken, now: datetime) -> bool:
    """Give back a send whose text certainly did not go out (the platform answered busy, over quota or a bad
    token; DeliveryError.undelivered): an outage must not use up, try by try, the allowance the notice needs
    once it is over. Only to the allowance it was taken from, never beyond what that one allowed: a newer
    action's is whole already. False when there is none to give it back to."""
    params = {"recipient": taken.openid, "grant": taken.granted_at, "sends": taken.sends, "now": now}
    return run_prebuilt(session, _refund_statement(), params).rowcount == 1


@functools.cache
def _refund_statement():
    columns = _TABLE.c
    return (update(_TABLE)
            .where(columns.openid == bindparam("recipient", type_=columns.openid.type),
                   columns.granted_at == bindparam("grant", type_=columns.granted_at.type),
                   columns.sends_left < bindparam("sends"), columns.following.is_(True))
            .values(sends_left=columns.sends_left + 1, updated_at=bindparam("now", type_=columns.updated_at.type)))


def templates_reach(session: Session, openid: str) -> bool:
    """False once we know a template cannot reach the person now: they do not follow the account (unsubscribed,
    or the platform said 43004), or the platform said the last one did not reach them (:func:`templates_failed`)."""
    row = session.execute(select(WechatAllowance.following, WechatAllowance.templates_failed_at)
                          .where(WechatAllowance.openid == openid)).first()
    return row is None or (row.following is not False and row.templates_failed_at is None)


def refused(session: Session, openid: str, errcode: int | None, now: datetime, *, channel: str) -> None:
    """The platform refused what our ledger allowed: 45047 (spent), 45015 (closed), 43004 (not following).

    A refused template says nothing about the customer-service allowance, only about following.
    """
    values: dict[str, object] = {"updated_at": now}
    if errcode == 43004:
        values |= {"following": False, "sends_left": 0}
    elif channel == "wechat":
        values["sends_left"] = 0
    else:
        return
    session.execute(update(WechatAllowance).where(WechatAllowance.openid == openid).values(**values)
                    .execution_options(synchronize_session=False))
    if errcode == 43004 and session.get(WechatAllowance, openid) is None:
        session.add(WechatAllowance(openid=openid, following=False, granted_by="none", granted_at=now,
                                    expires_at=now, sends_left=0, updated_at=now))


#: The grant time of a row that records something about a person who has granted nothing yet: any action of
#: theirs, whenever it is processed, replaces it (record_action keeps a newer grant only).
_NO_GRANT = datetime(1970, 1, 1, tzinfo=UTC)


def templates_failed(session: Session, openid: str, at: datetime, now: datetime) -> None:
    """The platform said, in its push received ``at``, that a template it took did not reach the person (its
    result event: ``failed:user block``, they turned the account's messages off, or ``failed:system failed``).
    Neither says when one would: none is tried for them until their next action (:func:`record_action` clears
    this; an action received after ``at`` already has), and that action opens the customer-service allowance.
    A platform failure is treated as the person's block: what must reach them has the SMS, or their next
    action, either way."""
    updated = session.execute(update(WechatAllowance)
                              .where(WechatAllowance.openid == openid, WechatAllowance.granted_at <= at)
                              .values(templates_failed_at=at, updated_at=now)
                              .execution_options(synchronize_session=False)).rowcount
    if not updated and session.get(WechatAllowance, openid) is None:
        session.add(WechatAllowance(openid=openid, following=True, granted_by="none", granted_at=_NO_GRANT,
                                    expires_at=_NO_GRANT, sends_left=0, updated_at=now, templates_failed_at=at))


def window_of(session: Session, openid: str) -> tuple[int, datetime] | None:
    """(sends left, window end) for ``openid``, or None before their first action (desk and tests)."""
    row = session.execute(select(WechatAllowance.sends_left, WechatAllowance.expires_at)
                          .where(WechatAllowance.openid == openid)).first()
    return (row[0], row[1]) if row else None
