"""Real servers on loopback for tests: moto's S3 server, any web server process, and a handler in a thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def http_handler_served(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a free loopback port from a thread, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class MotoS3Server:
    """moto's S3 server as a child process, so a test can stop and restart it.

    The port is kept across restarts (clients keep their endpoint URL); moto
    keeps state in memory, so a restart starts with no buckets.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("moto server exited at startup")
            try:
                requests.get(self.url + "/moto-api/", timeout=0.5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a wedged one would only end at SIGKILL
            stop_process(self._process, grace=5)
            self._process = None

    def wedge(self) -> None:
        """Stopped (SIGSTOP): it still takes connections (the kernel's backlog) but never answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def unwedge(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@contextmanager
def serving(args: list[str], *, env: dict[str, str], port: int, log_path: Path, cwd: Path | None = None,
            ready_path: str = "/healthz", timeout: float = 60.0) -> Iterator[str]:
    """Run a web server process until ``ready_path`` answers 200; yields its URL, stops it after.

    The process's output goes to ``log_path``, quoted when it fails to start.
    """
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{args[0]} exited at startup:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if requests.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer on {url}{ready_path}:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, *, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``grace`` seconds; waits for it either way."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def no_hold_expired(emulator) -> None:
    """After a test: every call the emulator held went on at the test's release, not at ``HOLD_MAX_SECONDS``
    (then the test saw an order it did not arrange, and checked less than it says)."""
    assert not emulator.expired_holds, f"{emulator.expired_holds} held call(s) went on at HOLD_MAX_SECONDS"
