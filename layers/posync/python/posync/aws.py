"""boto3 clients, built once per container from one shared session.

Every client takes its endpoint from ``AWS_ENDPOINT_URL`` (boto3 reads it itself),
so the same code runs against the embedded AWS, LocalStack or a real account.
One session means the service models and credentials are loaded once per container,
not once per client (each fresh session costs a few hundred milliseconds of cold start).
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
_lock = threading.Lock()  # boto3 sessions are not safe to build clients from concurrently
_session: boto3.session.Session | None = None
_clients: dict[str, Any] = {}


def client(service: str) -> Any:
    """A cached boto3 client for ``service`` (typed as Any: callers annotate with boto3-stubs)."""
    found = _clients.get(service)
    if found is not None:
        return found
    global _session  # noqa: PLW0603 - the container-wide session is the point of this module
    with _lock:
        if service not in _clients:
            if _session is None:
                _session = boto3.session.Session()
            _clients[service] = _session.client(service, config=_CONFIG)  # type: ignore[call-overload]
        return _clients[service]


def reset_clients() -> None:
    """Forget the session and its clients (tests that move AWS_ENDPOINT_URL call this)."""
    global _session  # noqa: PLW0603
    with _lock:
        _clients.clear()
        _session = None
