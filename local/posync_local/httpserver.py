"""What the local HTTP front and the provider sandboxes share below HTTP: a server that can cut its
kept-alive connections when it stops (else a client holding one open would be served after stop)."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TrackedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server (daemon threads) that keeps track of its open connections."""

    daemon_threads = True
    block_on_close = False
    close_sockets = False  # close_open_connections also closes the sockets, not only shuts them down

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Shut down (and with ``close_sockets``, close) every connection still open."""
        with self._open_lock:
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            if self.close_sockets:
                with contextlib.suppress(OSError):
                    conn.close()
