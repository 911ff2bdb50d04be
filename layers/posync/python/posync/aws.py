"""boto3 clients, built once per container.

Every client takes its endpoint from ``AWS_ENDPOINT_URL`` (boto3 reads it itself),
so the same code runs against the embedded AWS, LocalStack or a real account.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"max_attempts": 5, "mode": "adaptive"}, connect_timeout=5, read_timeout=30)


@functools.cache
def client(service: str) -> Any:
    """A cached boto3 client for ``service`` (typed as Any: callers annotate with boto3-stubs)."""
    return boto3.session.Session().client(service, config=_CONFIG)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget cached clients (tests that move AWS_ENDPOINT_URL call this)."""
    client.cache_clear()
