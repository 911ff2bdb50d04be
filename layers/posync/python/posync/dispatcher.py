"""The scheduled dispatcher: each tick, the due connections' syncs, within the app's budget.

One pass, in three steps, bounded by the invocation's deadline:

1. **Read** the active connections from the ``by-status`` index, fanned out over segments
   of its sort key (``SEGMENTS``: id ranges per provider, read by ``readers`` threads), and
   assess each with the polling policy (``posync.schedule``): due, not due, pending (a
   sync queued, not yet run) or running (a run in progress).
2. **Plan**: the most urgent due connections whose estimated requests fit each provider's
   tick budget; the rest are deferred to the next tick (counted, never dropped silently).
3. **Send** them to the FIFO sync queue ten per ``SendMessageBatch`` (``senders`` threads),
   then mark each queued connection (``queued_at``): the next pass coalesces on it.

- ``MessageGroupId`` = the connection id: one connection's syncs never run concurrently.
- ``MessageDeduplicationId`` = connection id + the schedule slot (the event time floored to
  the schedule): stable, so a retried or doubled schedule event sends nothing twice.

**Resumable.** The ``queued_at`` marks are the pass's saved position, per connection: an
invocation that times out or dies mid-pass is retried (Lambda retries a failed async
invocation twice; then the next tick runs), re-reads the index (cheap: one query per
thousand connections) and finds what it already queued pending; the rest is sent, most
urgent first, so no tail of the index is ever starved. A pass near its deadline stops
sending and reports ``complete: false``.

**Reconcile passes** (``{"kind": "reconcile"}``, their own daily schedule) queue one
``RECONCILE`` message per active connection, re-reading the last ``reconcile_days``
(``posync.reconcile``), outside the polling plan and without a ``queued_at`` mark; their
deduplication id is the connection, ``reconcile`` and the day.

Entries a batch call reports as failed are retried (with backoff) unless SQS says the sender
is at fault; what still fails is counted in the report (and logged), never raised: the next
slot sends it again.

Each pass also counts the ``needs_reauth`` connections and publishes the gauges the alarms
watch (``emit_metrics``): ``DispatcherRuns`` (1: its absence for two slots is the "dispatcher
not running" alarm), ``ConnectionsActive`` and ``ConnectionsNeedingReauth``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from posync.config import PROVIDERS, Settings
from posync.domain import Connection, ConnectionStatus
from posync.errors import ConnectionNotFound
from posync.observability import logger, metrics
from posync.ratelimit import NO_DEADLINE, Deadline
from posync.schedule import CLASSES, Candidate, PollConfig, State, assess, plan
from posync.syncqueue import SyncKind, SyncRequest
from posync.times import iso_ms

BATCH = 10
PAGE_SIZE = 1000
# Segments of the index's sort key (``provider#merchant_id``, inclusive bounds): merchant ids
# are [A-Z0-9]{13} (Clover) and lower-case UUIDs (Poynt), every character below "~".
_CHARS = {"clover": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", "poynt": "0123456789abcdef"}
_PARTS = {"clover": 6, "poynt": 2}


def _segments() -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for p in PROVIDERS:
        chars, parts = _CHARS[p], _PARTS[p]
        step = -(-len(chars) // parts)
        for i in range(0, len(chars), step):
            group = chars[i : i + step]
            out.append((f"{p}#{group[0]}", f"{p}#{group[-1]}~"))
    return tuple(out)


SEGMENTS = _segments()


class DispatchStore(Protocol):
    """What the dispatcher needs of the connections table (``ConnectionRepository``)."""

    def list_by_status(
        self,
        status: ConnectionStatus | str,
        page_size: int = 100,
        start_key: dict[str, Any] | None = None,
        id_range: tuple[str, str] | None = None,
    ) -> tuple[list[Connection], dict[str, Any] | None]: ...

    def mark_queued(self, conn_id: str, at: str) -> None: ...


@dataclass
class DispatchReport:
    slot: str
    kind: SyncKind = SyncKind.SCHEDULED
    since: str | None = None  # RECONCILE: the window's start
    connections: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    left: int = 0  # chosen but not sent before the deadline (the retry or next tick sends them)
    complete: bool = True
    calls: int = 0  # SendMessageBatch calls
    queries: int = 0
    marks: int = 0
    states: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    staleness_max_s: dict[str, float] = field(default_factory=dict)  # per class, settled connections
    planned: dict[str, int] = field(default_factory=dict)
    demand: dict[str, int] = field(default_factory=dict)
    budget: dict[str, int | None] = field(default_factory=dict)
    elapsed_s: float = 0.0
    needs_reauth: int = 0
    failed_connections: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "kind": self.kind.value,
            "connections": self.connections,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "left": self.left,
            "complete": self.complete,
            "calls": self.calls,
            "queries": self.queries,
            "marks": self.marks,
            "states": dict(self.states),
            "classes": dict(self.classes),
            "staleness_max_s": {k: round(v, 1) for k, v in self.staleness_max_s.items()},
            "planned_requests": self.planned,
            "demand_requests": self.demand,
            "budget_requests": self.budget,
            "elapsed_s": round(self.elapsed_s, 3),
            "needs_reauth": self.needs_reauth,
        }

    def metrics(self) -> list[tuple[str, MetricUnit, float]]:
        """The dispatcher's CloudWatch metrics (the handler emits each)."""
        return [
            ("DispatcherRuns", MetricUnit.Count, 1),  # the heartbeat DispatcherNotRunning watches
            ("ConnectionsActive", MetricUnit.Count, self.connections),
            ("ConnectionsNeedingReauth", MetricUnit.Count, self.needs_reauth),
            ("SyncsDispatched", MetricUnit.Count, self.sent),
            ("SyncsNotDispatched", MetricUnit.Count, self.failed),
            ("SyncsDeferred", MetricUnit.Count, self.deferred),
            ("SyncsCoalesced", MetricUnit.Count, self.states[State.PENDING] + self.states[State.RUNNING]),
            ("DispatchIncomplete", MetricUnit.Count, 0 if self.complete else 1),
            ("DispatchSeconds", MetricUnit.Seconds, round(self.elapsed_s, 3)),
            (
                "MaxStalenessSeconds",
                MetricUnit.Seconds,
                round(max(self.staleness_max_s.values(), default=0), 1),
            ),
        ]

    def emit_metrics(self) -> None:
        """Publish :meth:`metrics` (on the default dimensions the alarms watch)."""
        for name, unit, value in self.metrics():
            metrics.add_metric(name=name, unit=unit, value=value)


def schedule_slot(event_time: datetime, minutes: int) -> str:
    """The slot an event time falls in: floored to ``minutes`` since midnight UTC (``2026-11-23T18:15Z``)."""
    t = event_time.astimezone(UTC)
    since_midnight = t.hour * 60 + t.minute
    floored = since_midnight - since_midnight % max(1, minutes)
    slot = t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=floored)
    return slot.strftime("%Y-%m-%dT%H:%MZ")


def event_kind(event: dict[str, Any]) -> SyncKind:
    """``{"kind": "reconcile"}`` (the reconcile schedule's constant input), else a scheduled sync."""
    raw = event.get("kind") if isinstance(event, dict) else None
    return SyncKind.RECONCILE if raw == SyncKind.RECONCILE.value else SyncKind.SCHEDULED


def event_time(event: dict[str, Any]) -> datetime:
    """The scheduled event's ``time`` (EventBridge), or now if it has none or it is malformed."""
    raw = event.get("time") if isinstance(event, dict) else None
    if isinstance(raw, str):
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            t = None
        if t is not None:
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    return datetime.now(UTC)


_iso = iso_ms  # posync.times


class Dispatcher:
    def __init__(
        self,
        connections: DispatchStore,
        sqs: Any,
        queue_url: str | Callable[[], str],
        schedule_minutes: int,
        *,
        policy: PollConfig | None = None,
        reconcile_days: int = 7,
        page_size: int = PAGE_SIZE,
        max_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        segments: Sequence[tuple[str, str]] = SEGMENTS,
        readers: int = 4,
        senders: int = 16,
    ) -> None:
        self.connections = connections
        self.sqs = sqs
        self._queue_url = queue_url
        self.schedule_minutes = schedule_minutes
        self.policy = policy or PollConfig(
            tick_s=schedule_minutes * 60, max_interval_s=max(3600, schedule_minutes * 60)
        )
        self.reconcile_days = reconcile_days
        self.page_size = page_size
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.clock = clock
        self.segments = tuple(segments)
        self.readers = max(1, readers)
        self.senders = max(1, senders)
        self.rng = random.Random()  # noqa: S311 - backoff jitter
        self._lock = threading.Lock()

    @property
    def queue_url(self) -> str:
        if callable(self._queue_url):
            self._queue_url = self._queue_url()
        return self._queue_url

    def dispatch(
        self, when: datetime, deadline: Deadline = NO_DEADLINE, kind: SyncKind = SyncKind.SCHEDULED
    ) -> DispatchReport:
        t0 = time.monotonic()
        if kind is SyncKind.RECONCILE:
            start = (when - timedelta(days=self.reconcile_days)).astimezone(UTC)
            report = DispatchReport(
                slot=when.astimezone(UTC).strftime("%Y-%m-%d"), kind=kind, since=_iso(start.timestamp())
            )
        else:
            report = DispatchReport(slot=schedule_slot(when, self.schedule_minutes))
        # The tick's time is the event's (a retried invocation assesses as the original would).
        now_s = when.timestamp()
        candidates = self._read(now_s, deadline, report)
        if kind is SyncKind.RECONCILE:
            self._send_all(candidates, report, deadline, None)
        else:
            chosen = plan(candidates, self.policy)
            report.planned, report.demand, report.budget = chosen.planned, chosen.demand, chosen.budget
            report.deferred = len(chosen.deferred)
            # Marked with the earlier of the tick's time and now: a worker that started after it
            # (its run's started_at) has answered the message (tests fire ticks hours ahead).
            at = _iso(min(self.clock(), now_s))
            self._send_all(chosen.chosen, report, deadline, at)
        if not deadline.expired():
            report.needs_reauth = self._count(ConnectionStatus.NEEDS_REAUTH)
        report.elapsed_s = time.monotonic() - t0
        logger.info(f"dispatched {kind.value} syncs", extra=report.as_dict())
        if report.failed:
            logger.warning(
                "some syncs could not be queued", extra={"connections": report.failed_connections[:50]}
            )
        if not report.complete:
            logger.warning("dispatch pass stopped at its deadline; the next pass continues it")
        return report

    # ---- read and assess

    def _read(self, now_s: float, deadline: Deadline, report: DispatchReport) -> list[Candidate]:
        out: list[Candidate] = []

        def segment(id_range: tuple[str, str]) -> None:
            start_key: dict[str, Any] | None = None
            while True:
                if deadline.expired():
                    with self._lock:
                        report.complete = False
                    return
                conns, start_key = self.connections.list_by_status(
                    ConnectionStatus.ACTIVE, self.page_size, start_key, id_range=id_range
                )
                got = self._assess(conns, now_s, report)
                with self._lock:
                    report.queries += 1
                    out.extend(got)
                if not start_key:
                    return

        with ThreadPoolExecutor(max_workers=min(self.readers, len(self.segments)) or 1) as pool:
            for fut in [pool.submit(segment, r) for r in self.segments]:
                fut.result()
        return out

    def _assess(self, conns: list[Connection], now_s: float, report: DispatchReport) -> list[Candidate]:
        got: list[Candidate] = []
        states: Counter[str] = Counter()
        classes: Counter[str] = Counter()
        stale: dict[str, float] = {}
        everyone = report.kind is SyncKind.RECONCILE
        for conn in conns:
            if conn.status != ConnectionStatus.ACTIVE:
                continue
            if everyone:
                states["reconcile"] += 1
                got.append(Candidate(0.0, 0, conn.provider, conn.merchant_id, conn.connection_id))
                continue
            a = assess(conn, now_s, self.policy)
            states[a.state] += 1
            classes[a.cls] += 1
            if a.staleness_s is not None and a.state is not State.RUNNING:
                stale[a.cls] = max(stale.get(a.cls, 0.0), a.staleness_s)
            if a.state is State.DUE:
                got.append(Candidate(a.urgency, a.cost, conn.provider, conn.merchant_id, conn.connection_id))
        with self._lock:
            report.connections += sum(states.values())
            report.states.update(states)
            report.classes.update(classes)
            for cls in CLASSES:
                if cls in stale:
                    report.staleness_max_s[cls] = max(report.staleness_max_s.get(cls, 0.0), stale[cls])
        return got

    def _count(self, status: ConnectionStatus) -> int:
        """How many connections have ``status`` (the by-status index: one query per thousand)."""
        n = 0
        start_key: dict[str, Any] | None = None
        while True:
            conns, start_key = self.connections.list_by_status(status, PAGE_SIZE, start_key)
            n += sum(1 for c in conns if c.status is status)
            if not start_key:
                return n

    # ---- send

    def _send_all(
        self, chosen: list[Candidate], report: DispatchReport, deadline: Deadline, at: str | None
    ) -> None:
        batches = [chosen[i : i + BATCH] for i in range(0, len(chosen), BATCH)]

        def one(batch: list[Candidate]) -> None:
            if deadline.expired():
                with self._lock:
                    report.complete = False
                    report.left += len(batch)
                return
            self._send(batch, report, at)

        with ThreadPoolExecutor(max_workers=self.senders) as pool:
            for fut in [pool.submit(one, b) for b in batches]:
                fut.result()

    def _entry(self, i: int, c: Candidate, report: DispatchReport) -> dict[str, Any]:
        reconcile = report.kind is SyncKind.RECONCILE
        req = SyncRequest(
            provider=c.provider,
            merchant_id=c.merchant_id,
            kind=report.kind,
            since=report.since,
            reason=f"{'reconcile' if reconcile else 'schedule'} slot {report.slot}",
        )
        dedup = f"{c.connection_id}@{'reconcile@' if reconcile else ''}{report.slot}"
        return {
            "Id": str(i),
            "MessageBody": req.to_json(),
            "MessageGroupId": c.connection_id,
            "MessageDeduplicationId": dedup[:128],
        }

    def _send(self, batch: list[Candidate], report: DispatchReport, at: str | None) -> None:
        """Send ``batch``; mark each sent connection queued at ``at`` (None: no mark)."""
        by_id = {str(i): c for i, c in enumerate(batch)}
        entries = [self._entry(i, c, report) for i, c in enumerate(batch)]
        sent: list[Candidate] = []
        for attempt in range(self.max_attempts):
            with self._lock:
                report.calls += 1
            reply = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            sent.extend(by_id[ok["Id"]] for ok in reply.get("Successful", []))
            failed = reply.get("Failed", [])
            if not failed:
                break
            for f in failed:
                if f.get("SenderFault"):
                    self._give_up(by_id[f["Id"]], f.get("Code", "?"), report)
            retry_ids = {f["Id"] for f in failed if not f.get("SenderFault")}
            entries = [e for e in entries if e["Id"] in retry_ids]
            if not entries:
                break
            if attempt + 1 < self.max_attempts:
                self.sleep(self.rng.uniform(0, min(5.0, 0.2 * 2**attempt)))
        else:
            for e in entries:
                self._give_up(by_id[e["Id"]], "retries exhausted", report)
        with self._lock:
            report.sent += len(sent)
        if at is None:
            return
        for c in sent:
            try:
                self.connections.mark_queued(c.connection_id, at)
            except ConnectionNotFound:
                continue  # deleted meanwhile: its sync will be skipped
            except ClientError as exc:
                # The sync is queued; without the mark the next tick may queue one more (harmless).
                logger.warning(
                    "queued sync not marked",
                    extra={
                        "connection_id": c.connection_id,
                        "code": exc.response.get("Error", {}).get("Code"),
                    },
                )
                continue
            with self._lock:
                report.marks += 1

    def _give_up(self, c: Candidate, why: str, report: DispatchReport) -> None:
        with self._lock:
            report.failed += 1
            report.failed_connections.append(c.connection_id)
        logger.warning("sync not queued", extra={"connection_id": c.connection_id, "why": why})


def build_dispatcher(settings: Settings) -> Dispatcher:
    """The production wiring: connections on DynamoDB, the stage's sync queue, the policy from the env."""
    import os

    from posync.aws import client
    from posync.connections import ConnectionRepository
    from posync.syncqueue import queue_url

    def url() -> str:
        return queue_url(settings.sync_queue_url, settings.resources.queue("sync").name)

    policy = PollConfig.from_env(os.environ, settings.schedule_minutes)
    return Dispatcher(
        ConnectionRepository(settings),
        client("sqs"),
        url,
        settings.schedule_minutes,
        policy=policy,
        reconcile_days=settings.reconcile_days,
    )
