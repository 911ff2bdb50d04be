"""Scenario 2: one schedule tick over many merchants: dispatcher -> queue -> concurrent workers.

Each merchant synced before (its cursor is "now") and then took a few new orders. One
tick runs the real :class:`posync.dispatcher.Dispatcher` (connections paged from an
in-memory store, ``SendMessageBatch`` of ten) into an **in-process SQS FIFO queue**
(:class:`InProcessFifo`: message groups, deduplication ids, batches of up to ten), and
``workers`` threads drain it the way Lambda's SQS event source does (at most ``workers``
concurrent executions, like ``maxConcurrency``; each takes a batch of up to ten records
and runs them one after the other through the real ``SyncService``). Each worker thread is
a container of its own (its own ``SyncService``, ``SourceFactory`` and token limiters);
the app's request rate (:class:`posync.ratelimit.LocalAppRate`, 50/s) and its
concurrency leases (:class:`LocalAppSlots`, the same lease policy as
``DynamoAppSlots`` without DynamoDB) are shared. Orders go to a counting sink: the
embedded AWS is not what is measured.

Figure: wall time (dispatch to the last worker done) ÷ (requests needed ÷ the app's
rate), target <= 1.2. Requests needed: per merchant, three list reads of its one page (its
new orders fit a page; a complete order needs nine expansions, three per call) plus one
per new order with a nested list that reaches Clover's cut of 100.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.common import (
    MemoryConnections,
    NullMetrics,
    Recorder,
    StaticTokens,
    check,
    clover_limits,
    cpu_s,
    load,
    sandbox_settings,
)
from bench.sandboxproc import LIST_READS_PER_PAGE, SandboxProcess, now_ms
from posync.dispatcher import Dispatcher
from posync.domain import Connection
from posync.ratelimit import SYSTEM_CLOCK, AppSlots, Clock, Deadline, DynamoAppSlots, LocalAppRate
from posync.resources import WORKER_TIMEOUT_S
from posync.sync import SourceFactory, SyncConfig, SyncService
from posync.syncqueue import SyncRequest

PAGE_LIMIT = 1000

# --------------------------------------------------------------------------- an in-process SQS FIFO


@dataclass
class Message:
    id: str
    body: str
    group: str


@dataclass
class InProcessFifo:
    """Enough of an SQS FIFO queue for the dispatcher and the workers, thread-safe.

    ``send_message_batch`` / ``send_message`` take the boto3 shapes (deduplication ids
    honoured for the queue's lifetime); ``receive`` hands out up to ``n`` messages, never
    two of one message group at once (a group stays locked until its message is deleted),
    in send order.
    """

    _lock: threading.Condition = field(default_factory=threading.Condition)
    _pending: deque[Message] = field(default_factory=deque)
    _locked_groups: set[str] = field(default_factory=set)
    _dedup: set[str] = field(default_factory=set)
    in_flight: int = 0
    sent: int = 0
    calls: int = 0

    def _put(self, body: str, group: str, dedup: str) -> str:
        mid = str(uuid.uuid4())
        if dedup in self._dedup:
            return mid  # SQS answers success for a duplicate and drops it
        self._dedup.add(dedup)
        self._pending.append(Message(mid, body, group))
        self.sent += 1
        return mid

    def send_message_batch(self, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            self.calls += 1
            ok = [
                {
                    "Id": e["Id"],
                    "MessageId": self._put(
                        str(e["MessageBody"]), str(e["MessageGroupId"]), str(e["MessageDeduplicationId"])
                    ),
                }
                for e in Entries
            ]
            self._lock.notify_all()
        return {"Successful": ok, "Failed": []}

    def send_message(
        self,
        QueueUrl: str,  # noqa: N803 - boto3's parameter names
        MessageBody: str,  # noqa: N803
        MessageGroupId: str,  # noqa: N803
        MessageDeduplicationId: str,  # noqa: N803
    ) -> None:
        with self._lock:
            self.calls += 1
            self._put(MessageBody, MessageGroupId, MessageDeduplicationId)
            self._lock.notify_all()

    def receive(self, n: int, wait_s: float) -> list[Message]:
        """Up to ``n`` messages of distinct unlocked groups; waits up to ``wait_s`` for the first."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while True:
                got: list[Message] = []
                for msg in list(self._pending):
                    if len(got) >= n:
                        break
                    if msg.group in self._locked_groups or any(g.group == msg.group for g in got):
                        continue
                    got.append(msg)
                for msg in got:
                    self._pending.remove(msg)
                    self._locked_groups.add(msg.group)
                self.in_flight += len(got)
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._lock.wait(left)

    def delete(self, msg: Message) -> None:
        with self._lock:
            self._locked_groups.discard(msg.group)
            self.in_flight -= 1
            self._lock.notify_all()

    def idle(self) -> bool:
        with self._lock:
            return not self._pending and self.in_flight == 0


# --------------------------------------------------------------------------- the app's concurrency


class LocalAppSlots:
    """The app's concurrency leases in memory, with ``DynamoAppSlots``' policy.

    A run leases ``min(want, free)`` slots (at least one) until it ends and polls every
    ``DynamoAppSlots.WAIT_MIN_S`` while none is free (without DynamoAppSlots' backoff and
    fair-share renewals); ``lease()`` returns a handle per run, as ``build_sync_service``
    makes one ``DynamoAppSlots`` per run.
    """

    def __init__(
        self, capacity: int, clock: Clock = SYSTEM_CLOCK, poll_s: float = DynamoAppSlots.WAIT_MIN_S
    ) -> None:
        self.capacity = capacity
        self.clock = clock
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}
        self.waits = 0  # polls that found no free slot
        self.granted: list[int] = []

    def handle(self, provider: str) -> AppSlots:
        return _Lease(self)

    def _try(self, lease_id: str, want: int) -> int:
        with self._lock:
            free = self.capacity - sum(self._leases.values())
            grant = min(want, free)
            if grant >= 1:
                self._leases[lease_id] = grant
                self.granted.append(grant)
                return grant
            self.waits += 1
            return 0

    def _release(self, lease_id: str) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)


class _Lease:
    def __init__(self, pool: LocalAppSlots) -> None:
        self.pool = pool
        self.lease_id: str | None = None

    def lease(self, want: int, deadline: Deadline) -> int:
        lease_id = uuid.uuid4().hex
        while True:
            grant = self.pool._try(lease_id, want)
            if grant:
                self.lease_id = lease_id
                return grant
            deadline.check_wait(self.pool.poll_s, "app concurrency")
            self.pool.clock.sleep(self.pool.poll_s)

    def keep(self, in_flight: int) -> int | None:
        return None

    def release(self) -> None:
        if self.lease_id is not None:
            self.pool._release(self.lease_id)
            self.lease_id = None


# --------------------------------------------------------------------------- the tick


@dataclass
class TickSetup:
    merchants: list[str]
    tokens: dict[str, str]
    cursor_ms: int
    expected: dict[str, dict[str, int]]  # connection id -> order id -> modified ms
    nested: int  # expected orders whose nested lists reach the cut


def prepare(sb: SandboxProcess, *, merchants: int, new_orders: int, history: int = 20) -> TickSetup:
    """Merchants with some history, each synced up to now (its cursor), then ``new_orders`` each."""
    mids = sb.add_merchants(merchants, orders=history, days=30)
    tokens = sb.tokens(mids)
    cursor_ms = now_ms()
    time.sleep(0.002)
    for mid in mids:
        sb.create_orders(mid, new_orders)
    lookback_ms = SyncConfig(limits=clover_limits()).lookback_ms
    expected: dict[str, dict[str, int]] = {}
    nested = 0
    for mid in mids:
        want = {oid: ms for oid, ms in sb.truth(mid).items() if ms >= cursor_ms - lookback_ms}
        expected[Connection("clover", mid).connection_id] = want
        nested += len(sb.nested_needed(mid, want))
    return TickSetup(mids, tokens, cursor_ms, expected, nested)


def _worker_loop(
    queue: InProcessFifo,
    service: SyncService,
    failures: list[str],
    results: list[str],
    batch_size: int,
    done: threading.Event,
) -> None:
    while not done.is_set():
        batch = queue.receive(batch_size, 0.05)
        if not batch:
            if queue.idle():
                done.set()
            continue
        for msg in batch:
            try:
                req = SyncRequest.from_json(msg.body)
                result = service.run(req, Deadline.after(WORKER_TIMEOUT_S))
                results.append(result.status)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                queue.delete(msg)


def run_tick(
    sb: SandboxProcess,
    setup: TickSetup,
    *,
    workers: int,
    batch_size: int = 10,
    app_slots: bool = True,
) -> dict[str, Any]:
    limits = clover_limits()
    clover = limits["clover"]
    app_rps = float(clover.app_rps or 0)
    settings = sandbox_settings(sb.url)
    config = SyncConfig(limits=limits, app_limit="local")
    connections = MemoryConnections(
        [
            Connection("clover", mid, cursor={"v": 1, "modified_ms": setup.cursor_ms, "ids_at_T": []})
            for mid in setup.merchants
        ]
    )
    queue = InProcessFifo()
    app_rate = LocalAppRate(app_rps)
    slots = LocalAppSlots(int(clover.app_concurrency or workers))
    recorder = Recorder()
    tokens = StaticTokens(setup.tokens)

    def enqueue(request: SyncRequest, dedup_id: str) -> None:
        queue.send_message("bench", request.to_json(), request.connection_id, dedup_id)

    def container() -> SyncService:
        factory = SourceFactory(
            settings,
            tokens,
            config,
            app_rates={"clover": app_rate},
            app_slots=slots.handle if app_slots else None,
        )
        return SyncService(
            connections=connections,
            sources=factory,
            sinks=recorder.sink,
            enqueue=enqueue,
            config=config,
            metrics=NullMetrics(),
        )

    services = [container() for _ in range(workers)]
    dispatcher = Dispatcher(connections, queue, "bench-sync.fifo", 15)
    sb.set_knobs(latency_ms=50)
    sb.reset_stats()
    failures: list[str] = []
    results: list[str] = []
    done = threading.Event()
    load_before = load()
    cpu0 = cpu_s()
    t0 = time.monotonic()
    report = dispatcher.dispatch(datetime.now(UTC))
    t_dispatched = time.monotonic()
    threads = [
        threading.Thread(
            target=_worker_loop,
            args=(queue, svc, failures, results, batch_size, done),
            name=f"bench-worker-{i}",
            daemon=True,
        )
        for i, svc in enumerate(services)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    cpu1 = cpu_s()
    server = sb.requests_by_kind()
    pages = sum(max(1, math.ceil(len(v) / PAGE_LIMIT)) for v in setup.expected.values())
    needed = LIST_READS_PER_PAGE * pages + setup.nested
    ideal = needed / app_rps
    checks = [check(want, recorder.seen.get(cid, [])) for cid, want in setup.expected.items()]
    totals = {
        k: sum(getattr(c, k) for c in checks)
        for k in ("expected", "read", "lost", "duplicated", "stale", "unexpected")
    }
    ratio = wall / ideal
    return {
        "merchants": len(setup.merchants),
        "workers": workers,
        "batch_size": batch_size,
        "app_slots": "LocalAppSlots (DynamoAppSlots policy)" if app_slots else "none",
        "queue": "in-process FIFO (bench.tick.InProcessFifo)",
        "dispatched": report.sent,
        "dispatch_s": round(t_dispatched - t0, 3),
        "runs": dict(_count(results)),
        "failures": len(failures),
        "failure_examples": failures[:3],
        "continuations": queue.sent - report.sent,
        "wall_s": round(wall, 3),
        "requests_needed": needed,
        "requests": {k: server[k] for k in ("list", "by_id", "nested", "total")},
        "app_rps": app_rps,
        "ideal_s": round(ideal, 3),
        "ratio": round(ratio, 3),
        "target": 1.2,
        "pass": ratio <= 1.2,
        "achieved_rps": round(server["total"] / wall, 2),
        "rate_limited_429": server["rate_limited"],
        "slot_grants": dict(_count(slots.granted)),
        "slot_waits": slots.waits,
        "cpu_s": round(cpu1 - cpu0, 2),
        "check": totals,
        "check_ok": all(c.ok for c in checks) and not failures,
        "load_before": load_before,
        "load_after": load(),
    }


def _count(values: Sequence[Any]) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return sorted(out.items())


def scenario(sb: SandboxProcess, *, merchants: int, new_orders: int, workers: int) -> dict[str, Any]:
    """The tick with the production lease policy (the figure), then without leases (for comparison)."""
    t0 = time.monotonic()
    setup = prepare(sb, merchants=merchants, new_orders=new_orders)
    setup_s = time.monotonic() - t0
    with_slots = run_tick(sb, setup, workers=workers, app_slots=True)
    without = run_tick(sb, setup, workers=workers, app_slots=False)
    sb.set_knobs(latency_ms=0)
    return {
        "setup_s": round(setup_s, 2),
        "new_orders_per_merchant": new_orders,
        "with_slots": with_slots,
        "without_slots": without,
        "ratio": with_slots["ratio"],
        "pass": with_slots["pass"],
        "check_ok": with_slots["check_ok"] and without["check_ok"],
    }
