"""The emulator's loopback HTTP server: ``/cgi-bin/...`` for the API, ``/pic/<media_id>`` for PicUrls."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from accident_service.sandbox.responses import ApiResponse

if TYPE_CHECKING:
    from accident_service.sandbox.platform_api import PlatformApi

MAX_REQUEST_BYTES = 8 * 1024 * 1024


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts, aborted downloads) are part of the tests; real bugs still print.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LoopbackServing:
    """An emulator served on 127.0.0.1 from a thread of this process: start/stop it, or use it with ``with``.

    The emulator calls :meth:`_init_serving` from its ``__init__`` and builds its request handler in
    :meth:`_handler`; a handler sleeping in an injected delay waits on ``_stopping``, so stop() wakes it (a held
    call sees it within 0.1 s).
    """

    port: int  # 0 until started when asked for 0: a free port chosen at start()
    _thread_name = "emulator"

    def _init_serving(self, port: int) -> None:
        self.port = port
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            self._stopping.clear()
            self._server = EmulatorServer(("127.0.0.1", self.port), self._handler())
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=self._thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in an injected delay
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bound_port(self, what: str) -> int:
        """The port the server listens on; RuntimeError naming ``what`` before start()."""
        if self._server is None:
            raise RuntimeError(f"the {what} is not started")
        return self._server.server_address[1]


def handler_for(api: PlatformApi, stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    """A request handler serving ``api``; injected delays and holds end early once ``stopping`` is set."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "WeChatEmulator/1.0"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_REQUEST_BYTES)) if length > 0 else b""
            if url.path.startswith("/cgi-bin/"):
                relative = url.path[len("/cgi-bin/"):]
                if not api.wait_to_handle(relative, stopping):
                    return
                response = api.handle(method, relative, query, body)
            elif url.path.startswith("/pic/"):  # PicUrl: the image without a token, as the CDN serves it
                response = api.picture(url.path[len("/pic/"):])
            else:
                response = ApiResponse(404, "text/plain", b"not found")
            self._write(response)

        def _write(self, response: ApiResponse) -> None:
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                if response.send_length:
                    self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
