"""In-process processing right after the webhook answers, for latency only.

Durability never depends on this pool: if the process dies, the scheduler's
inbox sweeper picks the message up when its lease (or backoff) runs out.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from accident_service.runtime import Runtime

log = logging.getLogger(__name__)
_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _pool_for(runtime: Runtime) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(id(runtime))
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inbox")
            _pools[id(runtime)] = pool
        return pool


def submit_after_response(runtime: Runtime, message_id: int) -> None:
    _pool_for(runtime).submit(_process_then_drain, runtime, message_id)


def _process_then_drain(runtime: Runtime, message_id: int) -> None:
    from accident_service.wechat.processing import run_inbox_once

    worker_id = f"web-{os.getpid()}-{threading.get_ident()}"
    try:
        run_inbox_once(runtime, worker_id, limit=5, first_id=message_id)
        from accident_service.notify.dispatch import dispatch_due

        dispatch_due(runtime, worker_id, limit=20)
    except Exception:
        log.exception("inline processing of inbox message %s failed; the sweeper will retry", message_id)


def shutdown_pools() -> None:
    with _lock:
        for pool in _pools.values():
            pool.shutdown(wait=True)
        _pools.clear()


atexit.register(shutdown_pools)
