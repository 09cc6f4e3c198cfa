"""The app on a real loopback HTTP server (threads), and a drain helper for workers."""

from __future__ import annotations

import threading
import time

from werkzeug.serving import make_server

from accident_service.runtime import Runtime


class LiveServer:
    def __init__(self, app) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll: stop() returns within 50 ms instead of werkzeug's default half second.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


def drain(runtime: Runtime, *, worker_id: str = "test-worker", rounds: int = 20) -> None:
    """Process the inbox and dispatch the outbox until both are quiet (bounded)."""
    from accident_service.notify.dispatch import dispatch_due
    from accident_service.wechat.processing import run_inbox_once

    for _ in range(rounds):
        processed = run_inbox_once(runtime, worker_id, limit=50)
        sent = dispatch_due(runtime, worker_id, limit=100)
        if not processed and not sent:
            return
    raise AssertionError(f"inbox/outbox still busy after {rounds} rounds")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
