"""Fixtures for the sandbox tests: a fresh sandbox per test (limits off unless a test sets them),
and a webhook receiver. Helpers that connect a merchant over HTTP live in
``posync_local.sandbox.client``."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from posync_local.sandbox import CloverSandbox, PoyntSandbox, SandboxKnobs


def no_limits(**overrides: Any) -> SandboxKnobs:
    """Knobs with every rate and concurrency limit off, for tests of other behaviour."""
    base: dict[str, Any] = {
        "per_token_rps": None,
        "per_token_concurrency": None,
        "per_app_rps": None,
        "per_app_concurrency": None,
    }
    base.update(overrides)
    return SandboxKnobs(**base)


def reset(sandbox: CloverSandbox | PoyntSandbox) -> None:
    """Knobs back to ``no_limits()`` (same object: the server holds it), no queued faults, no
    rate-limit state, zero stats."""
    fresh = no_limits()
    for f in dataclasses.fields(SandboxKnobs):
        if not f.name.startswith("_"):
            setattr(sandbox.knobs, f.name, getattr(fresh, f.name))
    sandbox.knobs.clear_failures()
    sandbox.limiter.reset()
    sandbox.stats.reset()


@pytest.fixture(scope="module")
def shared_clover() -> Iterator[CloverSandbox]:
    with CloverSandbox(port=0, knobs=no_limits(), seed=7) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def shared_poynt() -> Iterator[PoyntSandbox]:
    with PoyntSandbox(port=0, knobs=no_limits(), seed=7) as sandbox:
        yield sandbox


@pytest.fixture
def clover(shared_clover: CloverSandbox) -> CloverSandbox:
    """A running Clover sandbox shared by the module (tests add their own merchants), reset."""
    reset(shared_clover)
    return shared_clover


@pytest.fixture
def poynt(shared_poynt: PoyntSandbox) -> PoyntSandbox:
    reset(shared_poynt)
    return shared_poynt


@pytest.fixture
def make_clover() -> Iterator[Callable[..., CloverSandbox]]:
    """Start extra Clover sandboxes (real limits unless knobs say otherwise); all stop at teardown."""
    started: list[CloverSandbox] = []

    def make(seed: int = 7, **knobs: Any) -> CloverSandbox:
        sandbox = CloverSandbox(port=0, knobs=SandboxKnobs(**knobs), seed=seed).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny webhook endpoint on 127.0.0.1 that records what it is sent."""

    url: str
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/webhooks", got)
    finally:
        server.shutdown()
        server.server_close()
