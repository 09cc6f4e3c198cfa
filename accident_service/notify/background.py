"""Send a change's notices right after it commits, in a small in-process pool, for latency only.

Durability never depends on this: the notices are in the outbox already and
the scheduler's dispatcher sends whatever this does not (rows are leased, so
both may run at once and each notice still goes out once).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from accident_service.runtime import Runtime

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def send_soon(runtime: Runtime) -> None:
    """Dispatch due notices in the background when INBOX_PROCESS_INLINE (the web process works inline)."""
    if not runtime.settings.INBOX_PROCESS_INLINE:
        return
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        _pool.submit(_dispatch, runtime)


def _dispatch(runtime: Runtime) -> None:
    from accident_service.notify.dispatch import dispatch_due

    try:
        dispatch_due(runtime, f"web-{os.getpid()}-notify", limit=20)
    except Exception:
        log.exception("sending notices inline failed; the scheduler's dispatcher will send them")


def _shutdown() -> None:
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=True)


atexit.register(_shutdown)
