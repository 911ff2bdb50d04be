"""The dispatcher: FIFO messages for the due connections, ten per call, deduplicated per slot."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from posync.dispatcher import Dispatcher, event_time, schedule_slot
from posync.domain import Connection, ConnectionStatus
from posync.syncqueue import SyncKind, SyncRequest

QUEUE = "https://sqs.us-east-1.amazonaws.com/000000000000/posync-dev-sync.fifo"


def merchant(i: int) -> str:
    return f"M{i:012d}"


class Connections:
    """Pages of active connections, like the by-status index: sorted by id, one segment at a time."""

    def __init__(
        self, n: int, page: int = 7, conns: list[Connection] | None = None, needs_reauth: int = 0
    ) -> None:
        self.conns = (
            conns
            if conns is not None
            else [Connection(provider="clover", merchant_id=merchant(i)) for i in range(n)]
        )
        self.reauth = [
            Connection("poynt", f"0b9f1c2e-1111-4222-8333-{i:012d}", ConnectionStatus.NEEDS_REAUTH)
            for i in range(needs_reauth)
        ]
        self.page = page
        self.queries = 0
        self.marked: list[tuple[str, str]] = []

    def list_by_status(
        self,
        status: ConnectionStatus | str,
        page_size: int = 100,
        start_key: dict[str, Any] | None = None,
        id_range: tuple[str, str] | None = None,
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        wanted = ConnectionStatus(status)
        self.queries += 1
        lo, hi = id_range or ("", "\uffff")
        rows = sorted(
            (c for c in self.conns + self.reauth if c.status is wanted and lo <= c.connection_id <= hi),
            key=lambda c: c.connection_id,
        )
        start = int(start_key["i"]) if start_key else 0
        size = min(self.page, page_size)
        chunk = rows[start : start + size]
        nxt = {"i": start + size} if start + size < len(rows) else None
        return chunk, nxt

    def mark_queued(self, conn_id: str, at: str) -> None:
        self.marked.append((conn_id, at))
        for c in self.conns:
            if c.connection_id == conn_id:
                c.queued_at = at


class FakeSQS:
    def __init__(self, fail_first: dict[str, bool] | None = None) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.fail_first = dict(fail_first or {})  # entry Id -> SenderFault, failed on the first call only

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        assert QueueUrl == QUEUE
        assert len(Entries) <= 10
        self.calls.append(Entries)
        failed = []
        ok = []
        for e in Entries:
            if e["Id"] in self.fail_first and len(self.calls) == 1:
                failed.append(
                    {"Id": e["Id"], "Code": "InternalError", "SenderFault": self.fail_first[e["Id"]]}
                )
            else:
                ok.append({"Id": e["Id"], "MessageId": "m" + e["Id"]})
        return {"Successful": ok, "Failed": failed}


def test_schedule_slots_floor_to_the_schedule() -> None:
    t = datetime(2026, 11, 23, 18, 29, 59, tzinfo=UTC)
    assert schedule_slot(t, 15) == "2026-11-23T18:15Z"
    assert schedule_slot(t, 60) == "2026-11-23T18:00Z"
    assert schedule_slot(t, 1) == "2026-11-23T18:29Z"
    assert schedule_slot(datetime(2026, 11, 23, 18, 30, tzinfo=UTC), 15) == "2026-11-23T18:30Z"


def test_event_time_comes_from_the_scheduled_event() -> None:
    assert event_time({"time": "2026-11-23T18:15:00Z"}) == datetime(2026, 11, 23, 18, 15, tzinfo=UTC)
    before = datetime.now(UTC)
    assert event_time({"time": "garbage"}) >= before
    assert event_time({}) >= before


def test_one_message_per_active_connection_ten_per_call() -> None:
    # Given 23 active connections, listed 7 at a time
    conns = Connections(23)
    sqs = FakeSQS()
    d = Dispatcher(conns, sqs, QUEUE, 15, senders=1)
    # When the schedule fires at 18:29
    report = d.dispatch(datetime(2026, 11, 23, 18, 29, tzinfo=UTC))
    # Then three calls (10 + 10 + 3) carried one scheduled sync per connection
    assert [len(c) for c in sqs.calls] == [10, 10, 3]
    assert (report.connections, report.sent, report.failed, report.calls, report.marks) == (23, 23, 0, 3, 23)
    entries = [e for call in sqs.calls for e in call]
    groups = [e["MessageGroupId"] for e in entries]
    assert groups == [f"clover#{merchant(i)}" for i in range(23)]
    assert {e["MessageDeduplicationId"] for e in entries} == {
        f"clover#{merchant(i)}@2026-11-23T18:15Z" for i in range(23)
    }
    req = SyncRequest.from_json(entries[0]["MessageBody"])
    assert (req.kind, req.merchant_id) == (SyncKind.SCHEDULED, merchant(0))


def test_the_same_slot_gives_the_same_deduplication_ids() -> None:
    # (two stores: the second pass runs as if the first one's marks were lost)
    a, b = FakeSQS(), FakeSQS()
    Dispatcher(Connections(3), a, QUEUE, 15).dispatch(datetime(2026, 11, 23, 18, 16, tzinfo=UTC))
    Dispatcher(Connections(3), b, QUEUE, 15).dispatch(datetime(2026, 11, 23, 18, 29, tzinfo=UTC))
    assert [e["MessageDeduplicationId"] for e in a.calls[0]] == [
        e["MessageDeduplicationId"] for e in b.calls[0]
    ]


def test_failed_entries_are_retried_and_sender_faults_counted() -> None:
    # Given SQS failing entries 2 and 5 on the first call (5 is the sender's fault)
    sqs = FakeSQS(fail_first={"2": False, "5": True})
    slept: list[float] = []
    d = Dispatcher(Connections(8), sqs, QUEUE, 15, sleep=slept.append)
    # When dispatching
    report = d.dispatch(datetime(2026, 11, 23, 18, 0, tzinfo=UTC))
    # Then only entry 2 is retried, and 5 is reported as failed
    assert [[e["Id"] for e in c] for c in sqs.calls] == [[str(i) for i in range(8)], ["2"]]
    assert (report.sent, report.failed) == (7, 1)
    assert report.failed_connections == [f"clover#{merchant(5)}"]
    assert len(slept) == 1


def test_no_connections_no_calls() -> None:
    sqs = FakeSQS()
    report = Dispatcher(Connections(0), sqs, QUEUE, 15).dispatch(datetime.now(UTC))
    assert sqs.calls == []
    assert report.connections == 0


def test_the_exact_sqs_call() -> None:
    # The call itself is the contract with SQS FIFO: checked with botocore's Stubber.
    sqs = boto3.client("sqs", region_name="us-east-1")
    body = SyncRequest("clover", merchant(0), SyncKind.SCHEDULED, reason="schedule slot 2026-11-23T18:15Z")
    with Stubber(sqs) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "0", "MessageId": "x", "MD5OfMessageBody": "y"}], "Failed": []},
            {
                "QueueUrl": QUEUE,
                "Entries": [
                    {
                        "Id": "0",
                        "MessageBody": body.to_json(),
                        "MessageGroupId": f"clover#{merchant(0)}",
                        "MessageDeduplicationId": f"clover#{merchant(0)}@2026-11-23T18:15Z",
                    }
                ],
            },
        )
        report = Dispatcher(Connections(1), sqs, QUEUE, 15).dispatch(
            datetime(2026, 11, 23, 18, 20, tzinfo=UTC)
        )
        stub.assert_no_pending_responses()
    assert report.sent == 1
    assert json.loads(body.to_json())["kind"] == "scheduled"


@pytest.mark.parametrize("minutes", [1, 5, 15, 60, 1440])
def test_slots_are_stable_within_a_period(minutes: int) -> None:
    base = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    from datetime import timedelta

    slots = {schedule_slot(base + timedelta(seconds=s), minutes) for s in range(0, minutes * 60, 7)}
    assert len(slots) == 1


# --------------------------------------------------------------------------- scaling


def test_the_segments_split_every_valid_connection_id_exactly_once() -> None:
    import itertools
    import uuid

    from posync.dispatcher import SEGMENTS

    ids = [f"clover#{a}{b}00000000000" for a, b in itertools.product("0AZ9MQ", "0Z")]
    ids += [f"poynt#{uuid.UUID(int=i * (2**124) + 7)}" for i in range(16)]
    for cid in ids:
        assert sum(lo <= cid <= hi for lo, hi in SEGMENTS) == 1, cid


def synced_conn(i: int, tick: datetime, *, started_ago_s: float) -> Connection:
    started = tick.timestamp() - started_ago_s
    iso = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return Connection(
        provider="clover",
        merchant_id=merchant(i),
        cursor={"v": 1, "modified_ms": int(started * 1000), "newest": int(started * 1000) - 60_000},
        last_run={"status": "completed", "kind": "scheduled", "started_at": iso, "counts": {"requests": 2}},
    )


def test_a_queued_connection_gets_no_new_message_until_its_sync_has_run() -> None:
    # Given 30 active connections last synced a tick ago
    t1 = datetime(2026, 11, 23, 18, 15, tzinfo=UTC)
    conns = Connections(0, page=1000, conns=[synced_conn(i, t1, started_ago_s=900) for i in range(30)])
    sqs = FakeSQS()
    d = Dispatcher(conns, sqs, QUEUE, 15)
    # When the tick queues them, and the next tick comes before any worker ran
    first = d.dispatch(t1)
    second = d.dispatch(datetime(2026, 11, 23, 18, 30, tzinfo=UTC))
    # Then the second tick coalesces: no message, all 30 pending
    assert first.sent == 30 and len(conns.marked) == 30
    assert second.sent == 0 and second.states["pending"] == 30
    # When the workers ran them (their runs started after the mark) and a tick passed
    for c in conns.conns:
        c.last_run = {**c.last_run, "started_at": "2026-11-23T18:31:00.000Z"}
        c.cursor = {
            **c.cursor,
            "modified_ms": int(datetime(2026, 11, 23, 18, 31, tzinfo=UTC).timestamp() * 1000),
        }
    third = d.dispatch(datetime(2026, 11, 23, 18, 45, tzinfo=UTC))
    # Then they are due again, with new deduplication ids for the new slot
    assert third.sent == 30
    assert {e["MessageDeduplicationId"] for e in sqs.calls[-1]} <= {
        f"clover#{merchant(i)}@2026-11-23T18:45Z" for i in range(30)
    }


def test_the_planned_requests_never_exceed_the_budget_and_the_most_stale_go_first() -> None:
    from posync.schedule import PollConfig

    # Given a provider limit of 0.1 request/s: 90 requests a tick at 100 %
    policy = PollConfig(tick_s=900, max_interval_s=3600, budget_share=1.0, app_rps={"clover": 0.1})
    tick = datetime(2026, 11, 23, 18, 15, tzinfo=UTC)
    conns = Connections(
        0, page=1000, conns=[synced_conn(i, tick, started_ago_s=900 + 10 * i) for i in range(100)]
    )
    sqs = FakeSQS()
    # When 100 connections are due at 2 requests each
    report = Dispatcher(conns, sqs, QUEUE, 15, policy=policy).dispatch(tick)
    # Then 45 are queued (90 requests), the 45 that waited longest, and 55 deferred
    sent = {e["MessageGroupId"] for call in sqs.calls for e in call}
    assert (report.sent, report.deferred, report.planned, report.demand) == (
        45,
        55,
        {"clover": 90},
        {"clover": 200},
    )
    assert sent == {f"clover#{merchant(i)}" for i in range(55, 100)}


def test_a_pass_stopped_at_its_deadline_is_finished_by_the_next_without_duplicates() -> None:
    from posync.ratelimit import Deadline

    class Clock:
        t = 0.0

        def monotonic(self) -> float:
            return self.t

        def time(self) -> float:
            return self.t

        def sleep(self, seconds: float) -> None:
            self.t += seconds

    clock = Clock()

    class SlowSQS(FakeSQS):
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
            clock.t += 1.0  # one second per call
            return super().send_message_batch(QueueUrl, Entries)

    # Given 95 new connections and a pass with 4.5 s left (one sender: one call a second)
    conns = Connections(95, page=1000)
    sqs = SlowSQS()
    d = Dispatcher(conns, sqs, QUEUE, 15, senders=1)
    tick = datetime(2026, 11, 23, 18, 15, tzinfo=UTC)
    first = d.dispatch(tick, Deadline(4.5, clock))
    # Then it stopped after 5 calls, saying so
    assert (first.sent, first.complete, first.left) == (50, False, 45)
    # When the retried invocation runs the same event
    second = d.dispatch(tick)
    # Then it sends the other 45 only: every connection was queued exactly once
    groups = [e["MessageGroupId"] for call in sqs.calls for e in call]
    assert (second.sent, second.complete, second.states["pending"]) == (45, True, 50)
    assert sorted(groups) == sorted(f"clover#{merchant(i)}" for i in range(95))


def test_a_reconcile_pass_queues_every_active_connection_outside_the_plan() -> None:
    # Given 12 active connections, one of them with a sync already queued (the plan would coalesce it)
    conns = Connections(12)
    conns.conns[0].queued_at = "2026-11-23T02:59:00.000Z"
    sqs = FakeSQS()
    d = Dispatcher(conns, sqs, QUEUE, 15, reconcile_days=7, senders=1)
    # When the reconcile schedule fires
    report = d.dispatch(datetime(2026, 11, 23, 3, 0, tzinfo=UTC), kind=SyncKind.RECONCILE)
    # Then every connection gets one RECONCILE of the last 7 days, deduplicated per connection and day
    entries = [e for call in sqs.calls for e in call]
    assert (report.sent, report.failed, len(entries)) == (12, 0, 12)
    reqs = [SyncRequest.from_json(e["MessageBody"]) for e in entries]
    assert {r.kind for r in reqs} == {SyncKind.RECONCILE}
    assert {r.since for r in reqs} == {"2026-11-16T03:00:00.000Z"}
    assert all(e["MessageDeduplicationId"].endswith("@reconcile@2026-11-23") for e in entries)
    assert report.as_dict()["kind"] == "reconcile"
    # And no connection is marked queued (the scheduled passes plan as before)
    assert conns.marked == []


def test_each_tick_counts_the_connections_needing_reauth() -> None:
    # Given 4 active connections and 9 needing the merchant to reconnect (more than one page)
    conns = Connections(4, needs_reauth=9)
    # When the dispatcher ticks
    report = Dispatcher(conns, FakeSQS(), QUEUE, 15, sleep=lambda _s: None).dispatch(
        datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    )
    # Then only the active ones are queued, and the needs_reauth ones are counted for the gauge
    assert (report.sent, report.needs_reauth) == (4, 9)
    assert report.as_dict()["needs_reauth"] == 9


def test_the_reconcile_schedule_queues_one_reconcile_per_connection_and_day() -> None:
    # Given 3 active connections and a 7-day reconcile window
    sqs = FakeSQS()
    d = Dispatcher(Connections(3), sqs, QUEUE, 15, reconcile_days=7)
    # When the reconcile schedule fires (twice the same day, then the next day)
    d.dispatch(datetime(2026, 11, 23, 3, 0, tzinfo=UTC), kind=SyncKind.RECONCILE)
    d.dispatch(datetime(2026, 11, 23, 9, 0, tzinfo=UTC), kind=SyncKind.RECONCILE)
    d.dispatch(datetime(2026, 11, 24, 3, 0, tzinfo=UTC), kind=SyncKind.RECONCILE)
    entries = [e for call in sqs.calls for e in call]
    # Then each message is a reconcile from 7 days back, deduplicated per connection and day
    reqs = [SyncRequest.from_json(e["MessageBody"]) for e in entries]
    assert {r.kind for r in reqs} == {SyncKind.RECONCILE}
    assert reqs[0].since == "2026-11-16T03:00:00.000Z"
    dedups = [e["MessageDeduplicationId"] for e in entries]
    assert dedups[0] == f"clover#{merchant(0)}@reconcile@2026-11-23" == dedups[3]
    assert dedups[6] == f"clover#{merchant(0)}@reconcile@2026-11-24"
    # And a scheduled dispatch afterwards is a plain sync again
    d.dispatch(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))
    last = SyncRequest.from_json(sqs.calls[-1][0]["MessageBody"])
    assert (last.kind, last.since) == (SyncKind.SCHEDULED, None)


def test_the_dispatcher_event_names_its_kind() -> None:
    from posync.dispatcher import event_kind

    assert event_kind({"kind": "reconcile"}) is SyncKind.RECONCILE
    assert event_kind({"time": "2026-11-23T18:15:00Z"}) is SyncKind.SCHEDULED
    assert event_kind({"kind": "anything"}) is SyncKind.SCHEDULED
