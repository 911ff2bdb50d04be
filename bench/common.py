"""Shared pieces: in-memory ports, a recording sink, the ground-truth check, load and output."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from posync.config import PROVIDERS, Settings
from posync.domain import Connection, ConnectionStatus, connection_id
from posync.errors import ConnectionNotFound
from posync.exports import modified_ms
from posync.ratelimit import Limits
from posync.transport import Http, HttpReply

# --------------------------------------------------------------------------- configuration


def clover_limits() -> dict[str, Limits]:
    """Clover's published limits (16/s and 5 in flight per token, 50/s and 10 per app) for every provider."""
    return {p: Limits.from_env(p, {}) for p in PROVIDERS}


def sandbox_settings(url: str, stage: str = "bench") -> Settings:
    return Settings.from_env(
        {
            "POSYNC_STAGE": stage,
            "POSYNC_CLOVER_OAUTH_BASE": url,
            "POSYNC_CLOVER_API_BASE": url,
            "POSYNC_CLOVER_AUTHORIZE_BASE": url,
        }
    )


def quiet_logs() -> None:
    """posync's Powertools logger to stderr at WARNING: stdout carries the figures only."""
    from posync.observability import logger

    logger.setLevel(logging.WARNING)
    handler = logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(sys.stderr)
    for name in ("botocore", "boto3", "urllib3", "werkzeug", "s3transfer", "posync_local"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- in-memory ports


class StaticTokens:
    """``AccessTokens`` from tokens obtained up front (no Secrets Manager in scenarios 1, 2, 4)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = dict(tokens)

    def access_token(self, conn: Connection) -> str:
        return self.tokens[conn.merchant_id]

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        return self.tokens[conn.merchant_id]


class MemoryConnections:
    """``ConnectionStore`` in memory (thread-safe), for runs that must not measure DynamoDB."""

    def __init__(self, conns: Sequence[Connection] = ()) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Connection] = {c.connection_id: c for c in conns}
        self.commits = 0
        self.errors: list[str] = []

    def add(self, conn: Connection) -> None:
        with self._lock:
            self._by_id[conn.connection_id] = conn

    def get(self, provider: str, merchant_id: str) -> Connection:
        with self._lock:
            conn = self._by_id.get(connection_id(provider, merchant_id))
        if conn is None:
            raise ConnectionNotFound(f"no connection {provider}#{merchant_id}")
        return conn

    def list_by_status(
        self,
        status: ConnectionStatus | str,
        page_size: int = 100,
        start_key: dict[str, Any] | None = None,
        id_range: tuple[str, str] | None = None,
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        lo, hi = id_range or ("", "\uffff")
        with self._lock:
            ids = sorted(
                k for k, c in self._by_id.items() if c.status == ConnectionStatus(status) and lo <= k <= hi
            )
        start = int(start_key["i"]) if start_key else 0
        page = [self._by_id[k] for k in ids[start : start + page_size]]
        more = start + page_size < len(ids)
        return page, ({"i": start + page_size} if more else None)

    def mark_queued(self, conn_id: str, at: str) -> None:
        with self._lock:
            self._by_id[conn_id].queued_at = at

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        with self._lock:
            conn.cursor = cursor
            conn.last_run = last_run
            self.commits += 1

    def record_error(self, conn: Connection, message: str) -> None:
        with self._lock:
            conn.last_error = message
            self.errors.append(message)


class NullMetrics:
    """The engine's metrics port, discarded (Powertools would print EMF lines on stdout)."""

    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None:
        return None


# --------------------------------------------------------------------------- sinks


@dataclass
class Recorder:
    """What counting sinks saw, per connection: (order id, modified ms) of every stored order."""

    seen: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    quarantined: int = 0
    pages: int = 0
    finished: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sink(self, conn: Connection, run_id: str) -> RecordingSink:
        return RecordingSink(self, conn.connection_id, run_id)

    def orders(self) -> int:
        return sum(len(v) for v in self.seen.values())


class RecordingSink:
    """The ``Sink`` port: counts pages and records each canonical order's id and version."""

    def __init__(self, recorder: Recorder, conn_id: str, run_id: str) -> None:
        self.recorder = recorder
        self.conn_id = conn_id
        self.run_id = run_id

    @property
    def wants_checkpoint(self) -> bool:
        return False

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        got = [(str(o["order_id"]), modified_ms(str(o["modified_at"]))) for o in orders]
        with self.recorder._lock:
            self.recorder.seen.setdefault(self.conn_id, []).extend(got)
            self.recorder.pages += 1
        return len(got)

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        with self.recorder._lock:
            self.recorder.quarantined += 1

    def checkpoint(self) -> None:
        return None

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None:
        with self.recorder._lock:
            self.recorder.finished += 1
        return None

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Check:
    """Orders read vs the sandbox's truth: lost (never read), duplicated (read twice or more),
    stale (read only at an older version than the truth), unexpected (not in the truth)."""

    expected: int
    read: int
    lost: int
    duplicated: int
    stale: int
    unexpected: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.stale == 0 and self.unexpected == 0

    def as_dict(self) -> dict[str, int]:
        return {
            "expected": self.expected,
            "read": self.read,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "stale": self.stale,
            "unexpected": self.unexpected,
        }


def check(truth: Mapping[str, int], seen: Sequence[tuple[str, int]]) -> Check:
    """Compare (id, modified ms) pairs read with the truth (id -> current modified ms).

    A version read twice counts as duplicated; an order whose newest version read is
    older than the truth's is stale (the truth does not change during these runs).
    """
    counts = Counter(seen)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    newest: dict[str, int] = {}
    for oid, ms in counts:
        newest[oid] = max(ms, newest.get(oid, ms))
    lost = sum(1 for oid in truth if oid not in newest)
    stale = sum(1 for oid, ms in newest.items() if oid in truth and ms < truth[oid])
    unexpected = sum(1 for oid in newest if oid not in truth)
    return Check(len(truth), len(seen), lost, duplicated, stale, unexpected)


# --------------------------------------------------------------------------- timing and load


class TimedHttp:
    """Wraps a transport's :class:`~posync.transport.Http`: when each provider request started and ended.

    ``json_reference``: also parse every successful reply's bytes with ``json.loads`` (and
    drop the objects), timing it on the thread's CPU clock (``json_loads_s``): the yardstick
    ``cpu_vs_json_loads`` divides by, measured on the same bytes in the same run; the caller
    subtracts it from the process's CPU.
    """

    def __init__(self, inner: Http, *, json_reference: bool = False) -> None:
        self.inner = inner
        self.json_reference = json_reference
        self._lock = threading.Lock()
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.requests = 0
        self.json_loads_s = 0.0
        self.json_bytes = 0

    def get(self, url: str, **kwargs: Any) -> HttpReply:
        start = time.monotonic()
        try:
            reply = self.inner.get(url, **kwargs)
            if self.json_reference and reply.status < 300 and reply.content:
                t0 = time.thread_time()
                json.loads(reply.content)
                spent = time.thread_time() - t0
                with self._lock:
                    self.json_loads_s += spent
                    self.json_bytes += len(reply.content)
            return reply
        finally:
            end = time.monotonic()
            with self._lock:
                self.requests += 1
                if self.first_start is None or start < self.first_start:
                    self.first_start = start
                if self.last_end is None or end > self.last_end:
                    self.last_end = end


class GcTimer:
    """Time spent in the cyclic garbage collector (per generation) while active (``with GcTimer() as t``)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        gen = int(info.get("generation", 2))
        self.collections[gen] += 1
        self.seconds[gen] += time.perf_counter() - self._t0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(sum(self.seconds), 3),
            "collections": list(self.collections),
            "seconds_by_generation": [round(s, 3) for s in self.seconds],
        }


def load() -> dict[str, float]:
    """The machine's load averages (1, 5 min) and core count: how noisy the figures are."""
    one, five, _ = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "cores": float(os.cpu_count() or 0)}


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- output


def say(text: str) -> None:
    print(text, flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")
