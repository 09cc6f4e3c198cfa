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
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

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


def submit_after_response(runtime: Runtime, message_id: int, msg_type: str, openid: str) -> None:
    lane = "photo" if msg_type in PHOTO_TYPES else "other"
    _pool_for(runtime, lane).submit(_process_then_follow, runtime, message_id, openid)


#: How many of the same driver's next messages a thread takes on after its own.
FOLLOW = 5


def _process_then_follow(runtime: Runtime, message_id: int, openid: str) -> None:
    """Process ``message_id`` and what it wrote, then the same driver's next messages as they come due
    (processing.run_drivers_messages). No other driver's message: in the text lane it could be a photo,
    and texts would wait behind it."""
    from accident_service.wechat.processing import run_drivers_messages

    worker_id = f"web-{os.getpid()}-{threading.get_ident()}"
    try:
        run_drivers_messages(runtime, worker_id, message_id, openid, follow=FOLLOW)
    except Exception:
        log.exception("inline processing of inbox message %s failed; the sweeper will retry", message_id)


def shutdown_pools() -> None:
    with _lock:
        for pool in _pools.values():
            pool.shutdown(wait=True)
        _pools.clear()


atexit.register(shutdown_pools)
