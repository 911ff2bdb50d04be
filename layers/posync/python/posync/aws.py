"""boto3 clients, built once per container from one shared session.

Every client takes its endpoint from ``AWS_ENDPOINT_URL`` (boto3 reads it itself),
so the same code runs against the embedded AWS, LocalStack or a real account.
One session means the service models and credentials are loaded once per container,
not once per client (each fresh session costs a few hundred milliseconds of cold start).

Clients are built on first use, not when a handler module is imported: ``client()`` hands
out a stand-in that builds the real client (from the shared session, once) the first time
one of its attributes is read. The first client of a container costs ~150-200 ms (endpoint
rules, the service model); an invocation that needs no AWS service of a handler's (a
rejected webhook, a health check, a caught-up sync that exports nothing) never pays for it.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

# A pool of 32: the dispatcher sends and marks from 16 threads at once (botocore's default is 10).
_CONFIG = Config(
    retries={"max_attempts": 5, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)
_lock = threading.Lock()  # boto3 sessions are not safe to build clients from concurrently
_session: boto3.session.Session | None = None
_clients: dict[str, Any] = {}


class _LazyClient:
    """Stands in for one service's boto3 client and builds it on first attribute access."""

    __slots__ = ("_built", "_service")

    def __init__(self, service: str) -> None:
        self._service = service
        self._built: Any = None

    def _client(self) -> Any:
        built = self._built
        if built is None:
            global _session  # noqa: PLW0603 - the container-wide session is the point of this module
            with _lock:
                if self._built is None:
                    if _session is None:
                        _session = boto3.session.Session()
                    self._built = _session.client(self._service, config=_CONFIG)  # type: ignore[call-overload]
                built = self._built
        return built

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client(), name)

    def __repr__(self) -> str:
        state = "built" if self._built is not None else "not built yet"
        return f"<posync.aws client {self._service!r}, {state}>"


def client(service: str) -> Any:
    """The container's boto3 client for ``service``, built on first use (typed as Any: callers
    annotate with boto3-stubs)."""
    found = _clients.get(service)
    if found is None:
        with _lock:
            found = _clients.setdefault(service, _LazyClient(service))
    return found


def reset_clients() -> None:
    """Forget the session and its clients (tests that move AWS_ENDPOINT_URL call this)."""
    global _session  # noqa: PLW0603
    with _lock:
        _clients.clear()
        _session = None
