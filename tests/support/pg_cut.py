"""A TCP proxy on loopback in front of PostgreSQL that can lose one answer: the connection dies after the
server has finished a statement (and, in autocommit, committed it) but before the client reads a byte of it.
It can also refuse connections for a while (a restart) and freeze (a server there but not answering).

    with CuttingProxy(("127.0.0.1", 5432)) as proxy:
        url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
        proxy.arm(b"inbound_message")   # the next statement whose text holds this ...
        ...                             # ... runs to its end on the server; its answer never arrives

The server's answer is held until it ends with ReadyForQuery (``Z``), which PostgreSQL sends only after the
statement's implicit transaction committed; then both sockets are closed and the answer dropped (at the
latest 10 s after the statement went through: a statement inside a transaction block never ends idle).
Connect with ``sslmode=disable``: inside TLS the marker cannot be seen.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

from sqlalchemy.engine import make_url

_READY_FOR_QUERY_IDLE = b"Z\x00\x00\x00\x05I"  # ReadyForQuery, no transaction open: the statement committed
_TIMEOUT_SECONDS = 10.0


class CuttingProxy:
    def __init__(self, server: tuple[str, int]) -> None:
        self._server = server
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._refusing_until = 0.0
        self._frozen = threading.Event()
        self.cut = 0  # answers dropped so far

    def arm(self, marker: bytes) -> None:
        """Lose the answer to the next statement, on any connection, whose bytes hold ``marker``."""
        with self._lock:
            self._marker = marker

    def refuse(self, seconds: float) -> None:
        """A blip: every connection through the proxy closed now, and new ones closed as they come, for
        ``seconds`` (a server restarting, a failover)."""
        with self._lock:
            self._refusing_until = time.monotonic() + seconds
            for end in self._open:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> None:
        """A server that is there but does not answer (stopped, hung): from now nothing is passed on either way, and
        connections, open ones and new ones, are kept open; the kernel still takes what the client sends."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def __enter__(self) -> CuttingProxy:
        accepting = threading.Thread(target=self._accept, daemon=True)
        accepting.start()
        self._threads.append(accepting)
        return self

    def __exit__(self, *_exc) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=_TIMEOUT_SECONDS)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                if time.monotonic() < self._refusing_until:
                    client.close()
                    continue
                self._open.add(client)
            relay = threading.Thread(target=self._relay, args=(client,), daemon=True)
            relay.start()
            self._threads.append(relay)

    def _take_marker(self, sent: bytes) -> bool:
        with self._lock:
            if self._marker is not None and self._marker in sent:
                self._marker = None
                return True
        return False

    def _relay(self, client: socket.socket) -> None:
        ends = [client]
        cutting, held, cut_by = False, b"", float("inf")
        try:
            server = socket.create_connection(self._server, timeout=_TIMEOUT_SECONDS)
            ends.append(server)
            client.settimeout(_TIMEOUT_SECONDS)
            while not self._stopped.is_set() and time.monotonic() < cut_by:
                if self._frozen.is_set():
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select([client, server], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    if not cutting and self._take_marker(data):
                        cutting, cut_by = True, time.monotonic() + _TIMEOUT_SECONDS  # never held open for long
                    server.sendall(data)
                if server in readable:
                    data = server.recv(65536)
                    if not data:
                        return
                    if not cutting:
                        client.sendall(data)
                        continue
                    held += data
                    if held.endswith(_READY_FOR_QUERY_IDLE):
                        self.cut += 1
                        return  # both closed below: the client reads nothing of the answer
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(client)
            for end in ends:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


@contextlib.contextmanager
def postgres_through_a_proxy(database_url: str) -> Iterator[tuple[CuttingProxy, str]]:
    """A :class:`CuttingProxy` in front of ``database_url``'s server, and the URL that connects through it."""
    url = make_url(database_url)
    with CuttingProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).update_query_dict(
            {"sslmode": "disable"}).render_as_string(hide_password=False)
