"""The durable inbox: store each push once, then process it under a lease.

The webhook only calls :func:`store_inbound` and answers. Workers (the
scheduler's sweeper, the web process's small pool) call :func:`claim_due` and
:func:`process`; the sweeper first gives up on messages whose worker died on
their last allowed attempt (:func:`give_up_on_exhausted`). Claims are atomic
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, an atomic conditional UPDATE inside
SQLite's write lock), one message per
driver at a time and in arrival order (but for what need not wait, see
:func:`_may_overtake`), and a crashed worker's lease simply
expires. The effects of a message and marking it done commit together, and
only while the lease is still ours: one effect per message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Dialect, and_, bindparam, exists, or_, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from accident_service import leases, metrics
from accident_service.db import DriverStatement, error_name, is_outage, is_postgres, tried_through_a_blip
from accident_service.models import InboundMessage, WorkStatus
from accident_service.runtime import Runtime
from accident_service.wechat import replay

log = logging.getLogger(__name__)
#: The pushes checked as photos: an image, and a file sent from the chat.
PHOTO_TYPES = ("image", "file")
#: The platform's report of what became of a template (WECHAT.md §5), as :func:`msg_type_of` names it.
TEMPLATE_RESULT = "event:templatesendjobfinish"
#: The longest wait between the tries of a message waiting out an outage (a photo: the evidence store or the
#: platform's download). Its backoff would double up to 10 minutes, and a driver at the roadside, told their photo
#: is being saved, would wait up to that long after the store came back; each such try is itself the probe of the
#: outage (a download and a write), so it comes at least once a minute, and the sender's later photos, queued
#: behind it, follow it at once.
OUTAGE_RETRY_WAIT_CAP = timedelta(minutes=1)
#: The lease of a message that is not a photo (a text, a click, a location: no download, no storage, one
#: transaction), when INBOX_LEASE_SECONDS is longer. A worker that dies on one leaves it to the sweep this soon, so a
#: menu click's answer still goes within the click's 1-minute allowance (WECHAT.md §5); with the whole lease (60 s)
#: it waited for the driver's next message (acceptance pass). Far beyond such a transaction on a working database;
#: a worker that overruns it (locks held long, a database in trouble) loses the message to the one that took it over
#: (LeaseLost: its transaction rolled back), never both apply it.
NO_NETWORK_LEASE_SECONDS = 20


class RetryLater(Exception):
    """Processing hit a transient failure (storage down, WeChat busy); try again later.

    ``keep_trying_until``: an outage the message can wait out (its media stays
    on the platform for days) is retried past the attempt limit until then.
    """

    def __init__(self, reason: str, *, keep_trying_until: datetime | None = None) -> None:
        super().__init__(reason)
        self.keep_trying_until = keep_trying_until


class LeaseLost(Exception):
    """Another worker took the message over; our effects must not commit."""


def dedupe_key_for(message) -> str:
    """MsgId for messages; FromUserName+CreateTime+Event for events, and the MsgID an event names (a template's
    result carries its template's): that id is not of the messages' sequence, and one person's two results may
    share a second."""
    named = getattr(message, "id", 0)
    if getattr(message, "type", "") != "event" and named:
        return f"msg:{named}"
    event = getattr(message, "event", None) or getattr(message, "type", "unknown")
    key = f"evt:{message.source}:{message.time}:{event}"
    return f"{key}:{named}" if named else key


def store_inbound(runtime: Runtime, message, xml_text: str, now: datetime, *,
                  not_before: datetime | None = None, signed: replay.SignedBody | None = None) -> int | None:
    """Insert the push and return its row id; None when it is a retry of one already stored.

    The UNIQUE dedupe key settles concurrent retries (ON CONFLICT DO NOTHING). ``not_before``
    defers its processing. With ``signed`` (plain mode) the push's (timestamp, nonce) is
    recorded as well; raises replay.SignatureReused, storing nothing, when another body came
    under it before. On PostgreSQL all of it is one statement, committed on its own (one round
    trip); run again, it changes nothing.
    """
    values = {"dedupe_key": dedupe_key_for(message), "openid": str(message.source)[:64],
              "msg_type": msg_type_of(message)[:32], "payload": xml_text, "received_at": now,
              "status": WorkStatus.PENDING, "attempts": 0, "next_attempt_at": not_before or now}
    if not is_postgres(runtime.engine):  # no data-modifying CTEs in SQLite, whose statements cost no round trip
        first_body, row_id = runtime.transaction(lambda connection: _store_step_by_step(connection, values, signed))
    elif signed is None:
        first_body, row_id = True, runtime.single_statement(
            lambda connection: connection.execute(_insert_inbound(True), values).scalar())
    else:
        first_body, row_id = runtime.single_statement(lambda connection: _insert_signed_inbound(
            connection.dialect).execute(connection, {**values, **signed.params()}).one())
    if not first_body:
        raise replay.SignatureReused()
    return row_id


def _store_step_by_step(connection: Connection, values: dict,
                        signed: replay.SignedBody | None) -> tuple[bool, int | None]:
    """SQLite: the signature record, then the inbox row if it holds, in the caller's transaction."""
    if signed is not None and not replay.first_body_for_signature(connection, signed):
        return False, None
    return True, connection.execute(_insert_inbound(False), values).scalar()


_INBOX_COLUMNS = ("dedupe_key", "openid", "msg_type", "payload", "received_at", "status", "attempts",
                  "next_attempt_at")


def _inbox_insert(postgres: bool, only_if: ColumnElement[bool] | None = None):
    """INSERT … SELECT of one push, skipped on a dedupe key already stored; RETURNING its id."""
    table = InboundMessage.__table__
    # WHERE even when unconditional: SQLite needs it to tell ON CONFLICT from a join's ON.
    row = select(*(bindparam(name, type_=table.c[name].type) for name in _INBOX_COLUMNS)).where(
        only_if if only_if is not None else true())
    insert = (postgresql.insert if postgres else sqlite.insert)(table).from_select(_INBOX_COLUMNS, row)
    return insert.on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(table.c.id)


@functools.cache
def _insert_inbound(postgres: bool):
    """Built once: every push runs it, and building a statement costs more than running it."""
    return _inbox_insert(postgres)


@functools.cache
def _insert_signed_inbound(dialect: Dialect) -> DriverStatement:
    """PostgreSQL: the signature record and, only if it holds, the inbox row, in one statement.

    Returns one row: (first_body, id), id NULL for a duplicate or a refused signature.
    """
    signature = replay.signature_upsert(True).cte("signature")
    first_body = exists(select(signature.c.body_sha256))
    stored = _inbox_insert(True, only_if=first_body).cte("stored")
    return DriverStatement(select(first_body.label("first_body"), select(stored.c.id).scalar_subquery().label("id")),
                           dialect)


Handler = Callable[[Runtime, InboundMessage, str], None]
GiveUpHook = Callable[[Session, InboundMessage, datetime], None]
#: (the leased message, its lease holder) -> True when it was handed on, still leased, for another worker to
#: take over (:func:`take_over`) and process.
HandOn = Callable[[InboundMessage, str], bool]


def claim_due(runtime: Runtime, worker_id: str, *, limit: int = 10, only_id: int | None = None,
              openid: str | None = None, after_id: int | None = None, oldest_first: bool = False) -> list[int]:
    """Lease up to ``limit`` due messages for ``worker_id`` and return their ids (committed: one statement).

    ``only_id``: that message, if it is due and its sender has nothing unfinished before it. ``openid``:
    only that sender's. ``after_id``: only messages that came after that one. ``oldest_first``: photos waiting
    out an outage too, rather than after every other due message (:func:`leases.claim`). A message whose worker died
    on its last allowed attempt is left to :func:`give_up_on_exhausted`.
    """
    settings = runtime.settings
    return leases.claim_as_own_transaction(
        runtime.single_statement, runtime.clock.now, InboundMessage, worker_id,
        lease_seconds=settings.INBOX_LEASE_SECONDS, limit=limit, only_id=only_id, after_id=after_id,
        recipients=None if openid is None else (openid,),
        max_attempts=settings.INBOX_MAX_ATTEMPTS, may_overtake=_may_overtake,
        waiting_until=InboundMessage.waiting_until, oldest_first=oldest_first,
        short_lease=_makes_no_network_call, short_lease_seconds=NO_NETWORK_LEASE_SECONDS)


def take_over(runtime: Runtime, message_id: int, from_worker: str, to_worker: str) -> bool:
    """A message claimed by ``from_worker`` and handed on (``process``'s ``hand_on``), now ``to_worker``'s with a
    fresh lease; False when its lease lapsed while it waited (the sweep's now, or already someone's)."""
    now = runtime.clock.now()
    return runtime.single_statement(lambda connection: leases.take_over(
        connection, InboundMessage, message_id, from_worker, to_worker, now=now,
        lease_seconds=runtime.settings.INBOX_LEASE_SECONDS, short_lease=_makes_no_network_call,
        short_lease_seconds=NO_NETWORK_LEASE_SECONDS))


def give_up_on_exhausted(runtime: Runtime, on_give_up: GiveUpHook | None = None) -> list[int]:
    """The sweep's step: mark FAILED the messages whose worker died (or hung) on their last allowed attempt,
    ``on_give_up`` running for each in that transaction; returns their ids."""
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        failed = leases.fail_exhausted(session, InboundMessage, now=now,
                                       max_attempts=runtime.settings.INBOX_MAX_ATTEMPTS,
                                       waiting_until=InboundMessage.waiting_until)
        if failed and on_give_up is not None:
            for row in session.scalars(select(InboundMessage).where(InboundMessage.id.in_(failed))):
                _run_give_up_hook(on_give_up, session, row, now)
        return failed


def _makes_no_network_call(row):
    """Every message but a photo (its download and storage): see NO_NETWORK_LEASE_SECONDS."""
    return row.msg_type.not_in(PHOTO_TYPES)


def _may_overtake(earlier, row):
    """What a driver sends need not wait behind a template's result waiting to be read again (it overtook the
    record of its send; nothing the driver does depends on it), and their texts and events need not wait behind
    photos held up by an outage: the first one waiting it out (``waiting_until`` set) and every photo sent
    after it, which waits its turn behind that one. Photos keep their order among themselves (they fill the
    checklist in the order they were sent)."""
    waiting = aliased(InboundMessage)
    return or_(and_(earlier.msg_type == TEMPLATE_RESULT, earlier.status == WorkStatus.PENDING, earlier.attempts > 0),
               and_(row.msg_type.not_in(PHOTO_TYPES), earlier.msg_type.in_(PHOTO_TYPES),
                    exists().where(waiting.openid == earlier.openid, waiting.id <= earlier.id,
                                   waiting.msg_type.in_(PHOTO_TYPES), waiting.waiting_until.is_not(None),
                                   waiting.status.in_((WorkStatus.PENDING, WorkStatus.PROCESSING)))))


def _run_give_up_hook(hook: GiveUpHook | None, session: Session, row: InboundMessage, now: datetime) -> None:
    """The hook's writes or nothing; a failing hook never undoes the FAILED mark."""
    if hook is None:
        return
    try:
        with session.begin_nested():
            hook(session, row, now)
    except Exception:
        log.exception("telling the sender of inbox message %s failed", row.id)


def process(runtime: Runtime, message_id: int, worker_id: str, handler: Handler,
            on_give_up: GiveUpHook | None = None, *, hand_on: HandOn | None = None) -> str:
    """Run ``handler`` for one leased message; returns "done", "retry", "failed", "lost" or "handed_on".

    ``handler(runtime, row, worker_id)`` does its own network work first and
    then calls :func:`finish` inside its final unit of work. ``on_give_up``
    runs in the transaction that marks the message failed for good (to tell
    the sender), never otherwise. ``hand_on(row, worker_id)`` may take the
    message elsewhere first, still leased to ``worker_id`` ("handed_on").
    """
    row = tried_through_a_blip(lambda: _leased_row(runtime, message_id, worker_id))
    if row is None:
        return "lost"
    if hand_on is not None and hand_on(row, worker_id):
        return "handed_on"
    try:
        handler(runtime, row, worker_id)
        outcome = "done"
    except LeaseLost:
        outcome = "lost"
    except RetryLater as exc:
        outcome = _schedule_retry(runtime, row, worker_id, f"{type(exc.__cause__ or exc).__name__}: {exc}",
                                  keep_trying_until=exc.keep_trying_until, on_give_up=on_give_up)
    except Exception as exc:  # a bug or poison message must not loop forever
        if is_outage(exc):  # a failover, a restart: one line, as a job meeting it logs; tried again after its backoff
            log.warning("inbox message %s not processed: database unavailable (%s)", message_id, error_name(exc))
        else:
            log.exception("inbox message %s failed", message_id)
        outcome = _schedule_retry(runtime, row, worker_id, f"{type(exc).__name__}: {exc}",
                                  on_give_up=on_give_up)
    metrics.INBOX_PROCESSED.labels(outcome).inc()
    return outcome


def _leased_row(runtime: Runtime, message_id: int, worker_id: str) -> InboundMessage | None:
    """Message ``message_id``, detached, if ``worker_id`` still holds its lease."""
    with runtime.unit_of_work() as session:
        row = session.get(InboundMessage, message_id)
        if row is None or row.leased_by != worker_id or row.status is not WorkStatus.PROCESSING:
            return None
        session.expunge(row)
        return row


def finish(session: Session, row: InboundMessage, worker_id: str, now: datetime) -> None:
    """Mark the message done in the caller's transaction; raises LeaseLost if it is no longer ours."""
    if not leases.complete(session, InboundMessage, row.id, worker_id, status=WorkStatus.DONE, processed_at=now,
                           last_error=None, waiting_until=None):
        raise LeaseLost(row.id)


def _schedule_retry(runtime: Runtime, row: InboundMessage, worker_id: str, error: str, *,
                    keep_trying_until: datetime | None = None, on_give_up: GiveUpHook | None = None) -> str:
    now = runtime.clock.now()
    wait = leases.backoff(row.attempts)
    if keep_trying_until is not None:  # this try met the outage again: the next one is its probe
        wait = min(wait, OUTAGE_RETRY_WAIT_CAP)
    else:
        # A message waiting out an outage spent its attempts waiting: whatever fails it now (a refusal for the
        # operator, a database error, a bug) leaves it the deadline it had, not the attempt limit long passed.
        keep_trying_until = row.waiting_until
    waiting = keep_trying_until is not None and now < keep_trying_until
    give_up = row.attempts >= runtime.settings.INBOX_MAX_ATTEMPTS and not waiting

    def record() -> bool:
        with runtime.unit_of_work() as session:
            still_ours = leases.complete(session, InboundMessage, row.id, worker_id,
                                         status=WorkStatus.FAILED if give_up else WorkStatus.PENDING,
                                         last_error=error, next_attempt_at=now + wait,
                                         waiting_until=keep_trying_until if waiting else None)
            if still_ours and give_up:
                _run_give_up_hook(on_give_up, session, row, now)
            return still_ours

    still_ours = tried_through_a_blip(record)
    if not still_ours:
        return "lost"
    if give_up:
        log.error("inbox message %s failed for good after %s attempts: %s", row.id, row.attempts, error)
        metrics.FAILURES.labels("inbox", metrics.Failure.OUTAGE_OUTLASTED if keep_trying_until
                                else metrics.Failure.ATTEMPTS_EXHAUSTED).inc()
        return "failed"
    return "retry"


def msg_type_of(message) -> str:
    kind = getattr(message, "type", "unknown")
    return f"event:{message.event}" if kind == "event" else kind
