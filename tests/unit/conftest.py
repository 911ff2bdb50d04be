"""Unit tests never touch the network: every socket but Unix ones is refused."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from pytest_socket import disable_socket, enable_socket

settings.register_profile(
    "posync", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# CI runs a fixed example sequence (a red CI must be reproducible); developers explore new ones.
settings.register_profile("ci", parent=settings.get_profile("posync"), derandomize=True, database=None)
settings.load_profile("ci" if os.environ.get("CI") else "posync")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A suite that ran earlier in this process (integration or chaos, under xdist in any order)
    # may have left its embedded AWS's endpoint in the environment: unit tests never use one.
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        monkeypatch.delenv(name)
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()
