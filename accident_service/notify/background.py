"""Send a change's notices right after it commits, in a small in-process pool, for latency only.

Durability never depends on this: the notices are in the outbox already and
the scheduler's dispatcher sends whatever this does not (rows are leased, so
both may run at once and each notice still goes out once). Only the notices
for the people the change wrote to go: other people's are the dispatcher's
job, as after a driver's message (wechat.processing).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from accident_service import outbox
from accident_service.runtime import Runtime

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


@contextmanager
def notices_follow(runtime: Runtime) -> Iterator[None]:
    """The block's committed change is followed by what is due for the people it wrote to, sent in the
    background when INBOX_PROCESS_INLINE (the web process works inline). A block that raises sends nothing."""
    with outbox.recipients_written() as recipients:
        yield
    if recipients and runtime.settings.INBOX_PROCESS_INLINE:
        _submit(runtime, frozenset(recipients))


def _submit(runtime: Runtime, recipients: Collection[str]) -> None:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        _pool.submit(_dispatch, runtime, recipients)


def _dispatch(runtime: Runtime, recipients: Collection[str]) -> None:
    from accident_service.notify.dispatch import dispatch_after_change

    try:
        dispatch_after_change(runtime, f"web-{os.getpid()}-notify", recipients)
    except Exception:
        log.exception("sending notices inline failed; the scheduler's dispatcher will send them")


def _shutdown() -> None:
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=True)


atexit.register(_shutdown)
