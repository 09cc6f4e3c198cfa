"""In-process processing right after the webhook answers, for latency only.

Durability never depends on this pool: if the process dies, the scheduler's
inbox sweeper picks the message up when its lease (or backoff) runs out.

Photos and everything else go in separate lanes: a photo takes a download, a
check and two storage writes, anything else milliseconds, so a driver's text
(a slot pick, a phone number) is answered while other drivers' photos queue.
Per-driver order is the inbox's (one message per driver at a time, in order),
whichever lane a message takes; a thread follows its driver's next messages.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Select, bindparam, select

from accident_service.models import InboundMessage, WorkStatus
from accident_service.runtime import Runtime
from accident_service.wechat.conversation import PHOTO_TYPES

log = logging.getLogger(__name__)
#: Threads per lane in each web process.
LANES = {"photo": 2, "other": 1}
_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _pool_for(runtime: Runtime, lane: str) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get((id(runtime), lane))
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=LANES[lane], thread_name_prefix=f"inbox-{lane}")
            _pools[(id(runtime), lane)] = pool
        return pool


def submit_after_response(runtime: Runtime, message_id: int, msg_type: str) -> None:
    lane = "photo" if msg_type in PHOTO_TYPES else "other"
    _pool_for(runtime, lane).submit(_process_then_follow, runtime, message_id)


#: How many of the same driver's next messages a thread takes on after its own.
FOLLOW = 5


def _process_then_follow(runtime: Runtime, message_id: int) -> None:
    """Process ``message_id`` and send what is due for the people it wrote to (processing's rule); then the
    same driver's next message, if one is due.

    A driver's message handed off while their previous one was still processing could not be claimed
    then (one message per driver at a time): the thread that finishes the previous one takes it on. No
    other driver's message: in the text lane it could be a photo, and texts would wait behind it.
    """
    from accident_service.wechat.processing import run_inbox_once

    worker_id = f"web-{os.getpid()}-{threading.get_ident()}"
    try:
        for _ in range(1 + FOLLOW):
            run_inbox_once(runtime, worker_id, limit=0, first_id=message_id)
            next_id = _drivers_next(runtime, message_id)
            if next_id is None:
                return
            message_id = next_id
    except Exception:
        log.exception("inline processing of inbox message %s failed; the sweeper will retry", message_id)


def _drivers_next(runtime: Runtime, message_id: int) -> int | None:
    """The same driver's next message waiting to be processed and due now, if any (one read: one round trip)."""
    params = {"message_id": message_id, "now": runtime.clock.now()}
    return runtime.single_statement(lambda connection: connection.execute(_next_of_same_driver(), params).scalar())


@functools.cache
def _next_of_same_driver() -> Select:
    """Built once: every message processed inline asks it, and building it cost more CPU than running it."""
    message_id = bindparam("message_id", type_=InboundMessage.id.type)
    openid = select(InboundMessage.openid).where(InboundMessage.id == message_id).scalar_subquery()
    return select(InboundMessage.id).where(
        InboundMessage.openid == openid, InboundMessage.id > message_id, InboundMessage.status == WorkStatus.PENDING,
        InboundMessage.next_attempt_at <= bindparam("now", type_=InboundMessage.next_attempt_at.type)
    ).order_by(InboundMessage.id).limit(1)


def shutdown_pools() -> None:
    with _lock:
        for pool in _pools.values():
            pool.shutdown(wait=True)
        _pools.clear()


atexit.register(shutdown_pools)
