"""A running emulator on a clock the test moves, and a bare callback receiver standing in for the service's /wechat."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from accident_service.sandbox.emulator import WeChatEmulator
from tests.support.servers import http_handler_served, no_hold_expired

APPID = "wx2c2769f8efd9abc2"
SECRET = "emulator-secret"
TOKEN = "spamtest"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # (request) -> (status, body); default: "success" for POST, echo echostr for GET
    respond: Callable[[Received], tuple[int, bytes]] | None = None

    @property
    def last(self) -> Received:
        return self.requests[-1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Received(method, url.path, {k: v[-1] for k, v in parse_qs(url.query).items()},
                               self.rfile.read(length) if length else b"")
            state.requests.append(request)
            if state.respond is not None:
                status, body = state.respond(request)
            elif method == "GET":
                status, body = 200, request.query.get("echostr", "").encode()
            else:
                status, body = 200, b"success"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with http_handler_served(Handler) as server:
        state.url = f"http://127.0.0.1:{server.server_address[1]}/wechat"
        yield state


class PlatformClock:
    """The emulator's clock in tests: epoch seconds that move only when the test says so."""

    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def platform_clock() -> PlatformClock:
    return PlatformClock()


@pytest.fixture
def emulator(receiver: Receiver, platform_clock: PlatformClock) -> Iterator[WeChatEmulator]:
    """Plain mode by default (push with encrypted=True for safe mode); time moves with ``platform_clock``."""
    with WeChatEmulator(APPID, SECRET, TOKEN, AES_KEY, callback_url=receiver.url,
                        encrypted_by_default=False, clock=platform_clock) as running:
        yield running
    no_hold_expired(running)
