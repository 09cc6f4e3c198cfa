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

from accident_service.db import error_name, is_outage
from accident_service.logs import current_request_id, log_context
from accident_service.runtime import Runtime
from accident_service.wechat.inbox import PHOTO_TYPES

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
    # What its thread logs for this message carries the id of the push's request: an operator following a push
    # by its id finds its processing too (the driver's next messages, which the thread may take on, do not).
    _submit(runtime, _lane_of(msg_type), message_id, openid, request_id=current_request_id())


def _lane_of(msg_type: str) -> str:
    return "photo" if msg_type in PHOTO_TYPES else "other"


def _submit(runtime: Runtime, lane: str, message_id: int, openid: str, leased_by: str | None = None, *,
            request_id: str | None = None) -> None:
    _pool_for(runtime, lane).submit(_process_then_follow, runtime, lane, message_id, openid, leased_by,
                                    request_id=request_id)


#: How many of the same driver's next messages a thread takes on after its own.
FOLLOW = 5


def _process_then_follow(runtime: Runtime, lane: str, message_id: int, openid: str,
                         leased_by: str | None = None, *, request_id: str | None = None) -> None:
    """Process ``message_id`` (claimed already when ``leased_by``) and what it wrote, then the same driver's
    next messages as they come due (processing.run_drivers_messages). No other driver's message. In the
    text lane a photo of theirs goes on to the photo lane, lease and all: other drivers' texts must not
    wait behind its download (a text is answered first, and the photo sent while it was, behind it)."""
    from accident_service.wechat.processing import run_drivers_messages

    def photos_to_their_lane(row, holder: str) -> bool:
        if _lane_of(row.msg_type) == lane:
            return False
        try:
            _submit(runtime, "photo", row.id, openid, leased_by=holder)
        except RuntimeError:  # the pools are shutting down: processed here, rather than left to lapse
            return False
        return True

    worker_id = f"web-{os.getpid()}-{threading.get_ident()}"
    with log_context(request_id):
        try:
            run_drivers_messages(runtime, worker_id, message_id, openid, follow=FOLLOW, leased_by=leased_by,
                                 hand_on=photos_to_their_lane if lane == "other" else None)
        except Exception as exc:
            if is_outage(exc):  # one line, as the scheduler's jobs and the inbox log one (acceptance pass)
                log.warning("inline processing of inbox message %s stopped: database unavailable (%s); the sweeper "
                            "will retry", message_id, error_name(exc))
            else:
                log.exception("inline processing of inbox message %s failed; the sweeper will retry", message_id)


def shutdown_pools() -> None:
    """Wait for what the lanes hold. Outside the lock: a text-lane thread may still hand a photo on (which
    takes the lock to find the photo lane), and the text lanes first, so what they hand on is waited for."""
    with _lock:
        pools = sorted(_pools.items(), key=lambda item: item[0][1] == "photo")
    for _key, pool in pools:
        pool.shutdown(wait=True)
    with _lock:
        for key, pool in pools:
            if _pools.get(key) is pool:
                del _pools[key]


atexit.register(shutdown_pools)
