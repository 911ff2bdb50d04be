"""The scheduled dispatcher: one sync message per active connection per schedule slot.

Connections are paged from the ``by-status`` index (``list_by_status("active")``) and sent
to the FIFO sync queue ten per ``SendMessageBatch`` call:

- ``MessageGroupId`` = the connection id: one connection's syncs never run concurrently,
  different connections run in parallel (up to the worker's ``maxConcurrency``);
- ``MessageDeduplicationId`` = connection id + the schedule slot (the event time floored to
  ``settings.schedule_minutes``): a retried or doubled schedule event within SQS's
  five-minute deduplication window sends nothing twice.

Entries a batch call reports as failed are retried (with backoff) unless SQS says the
sender is at fault; what still fails is counted in the report (and logged), never raised:
the next slot will send it again.

Each tick also counts the ``needs_reauth`` connections and publishes the gauges the alarms
watch (``emit_metrics``): ``DispatcherRuns`` (1: its absence for two slots is the "dispatcher
not running" alarm), ``ConnectionsActive`` and ``ConnectionsNeedingReauth``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from posync.config import Settings
from posync.domain import Connection, ConnectionStatus
from posync.observability import logger, metrics
from posync.ports import ConnectionStore
from posync.syncqueue import SyncKind, SyncRequest

BATCH = 10


@dataclass
class DispatchReport:
    slot: str
    connections: int = 0
    sent: int = 0
    failed: int = 0
    calls: int = 0
    needs_reauth: int = 0
    failed_connections: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "connections": self.connections,
            "sent": self.sent,
            "failed": self.failed,
            "calls": self.calls,
            "needs_reauth": self.needs_reauth,
        }

    def emit_metrics(self) -> None:
        """The tick's metrics (on the default dimensions the alarms watch)."""
        metrics.add_metric(name="DispatcherRuns", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="SyncsDispatched", unit=MetricUnit.Count, value=self.sent)
        metrics.add_metric(name="SyncsNotDispatched", unit=MetricUnit.Count, value=self.failed)
        metrics.add_metric(name="ConnectionsActive", unit=MetricUnit.Count, value=self.connections)
        metrics.add_metric(name="ConnectionsNeedingReauth", unit=MetricUnit.Count, value=self.needs_reauth)


def schedule_slot(event_time: datetime, minutes: int) -> str:
    """The slot an event time falls in: floored to ``minutes`` since midnight UTC (``2026-11-23T18:15Z``)."""
    t = event_time.astimezone(UTC)
    since_midnight = t.hour * 60 + t.minute
    floored = since_midnight - since_midnight % max(1, minutes)
    slot = t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=floored)
    return slot.strftime("%Y-%m-%dT%H:%MZ")


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


class Dispatcher:
    def __init__(
        self,
        connections: ConnectionStore,
        sqs: Any,
        queue_url: str | Callable[[], str],
        schedule_minutes: int,
        *,
        page_size: int = 100,
        max_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connections = connections
        self.sqs = sqs
        self._queue_url = queue_url
        self.schedule_minutes = schedule_minutes
        self.page_size = page_size
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.rng = random.Random()  # noqa: S311 - backoff jitter

    @property
    def queue_url(self) -> str:
        if callable(self._queue_url):
            self._queue_url = self._queue_url()
        return self._queue_url

    def dispatch(self, when: datetime) -> DispatchReport:
        report = DispatchReport(slot=schedule_slot(when, self.schedule_minutes))
        pending: list[Connection] = []
        start_key: dict[str, Any] | None = None
        while True:
            conns, start_key = self.connections.list_by_status(
                ConnectionStatus.ACTIVE, self.page_size, start_key
            )
            for conn in conns:
                if conn.status != ConnectionStatus.ACTIVE:
                    continue
                report.connections += 1
                pending.append(conn)
                if len(pending) == BATCH:
                    self._send(pending, report)
                    pending = []
            if not start_key:
                break
        if pending:
            self._send(pending, report)
        report.needs_reauth = self._count(ConnectionStatus.NEEDS_REAUTH)
        logger.info("dispatched scheduled syncs", extra=report.as_dict())
        if report.failed:
            logger.warning(
                "some syncs could not be queued", extra={"connections": report.failed_connections[:50]}
            )
        return report

    def _count(self, status: ConnectionStatus) -> int:
        n = 0
        start_key: dict[str, Any] | None = None
        while True:
            conns, start_key = self.connections.list_by_status(status, 1000, start_key)
            n += sum(1 for c in conns if c.status is status)
            if not start_key:
                return n

    def _entry(self, i: int, conn: Connection, slot: str) -> dict[str, Any]:
        req = SyncRequest(
            provider=conn.provider,
            merchant_id=conn.merchant_id,
            kind=SyncKind.SCHEDULED,
            reason=f"schedule slot {slot}",
        )
        return {
            "Id": str(i),
            "MessageBody": req.to_json(),
            "MessageGroupId": conn.connection_id,
            "MessageDeduplicationId": f"{conn.connection_id}@{slot}"[:128],
        }

    def _send(self, conns: list[Connection], report: DispatchReport) -> None:
        by_id = {str(i): conn for i, conn in enumerate(conns)}
        entries = [self._entry(i, c, report.slot) for i, c in enumerate(conns)]
        for attempt in range(self.max_attempts):
            report.calls += 1
            reply = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            report.sent += len(reply.get("Successful", []))
            failed = reply.get("Failed", [])
            if not failed:
                return
            permanent = [f for f in failed if f.get("SenderFault")]
            for f in permanent:
                self._give_up(by_id[f["Id"]], f.get("Code", "?"), report)
            retry_ids = {f["Id"] for f in failed if not f.get("SenderFault")}
            entries = [e for e in entries if e["Id"] in retry_ids]
            if not entries:
                return
            if attempt + 1 < self.max_attempts:
                self.sleep(self.rng.uniform(0, min(5.0, 0.2 * 2**attempt)))
        for e in entries:
            self._give_up(by_id[e["Id"]], "retries exhausted", report)

    @staticmethod
    def _give_up(conn: Connection, why: str, report: DispatchReport) -> None:
        report.failed += 1
        report.failed_connections.append(conn.connection_id)
        logger.warning("sync not queued", extra={"connection_id": conn.connection_id, "why": why})


def build_dispatcher(settings: Settings) -> Dispatcher:
    """The production wiring: connections on DynamoDB, the stage's sync queue."""
    from posync.aws import client
    from posync.connections import ConnectionRepository
    from posync.syncqueue import queue_url

    def url() -> str:
        return queue_url(settings.sync_queue_url, settings.resources.queue("sync").name)

    return Dispatcher(ConnectionRepository(settings), client("sqs"), url, settings.schedule_minutes)
