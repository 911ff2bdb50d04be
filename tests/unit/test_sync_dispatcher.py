"""The dispatcher: one FIFO message per active connection, ten per call, deduplicated per slot."""

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
    """Pages of active connections, like the by-status index (with a stray inactive one)."""

    def __init__(self, n: int, page: int = 7) -> None:
        self.conns = [Connection(provider="clover", merchant_id=merchant(i)) for i in range(n)]
        self.page = page
        self.queries = 0

    def get(self, provider: str, merchant_id: str) -> Connection:
        raise NotImplementedError

    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        assert ConnectionStatus(status) is ConnectionStatus.ACTIVE
        self.queries += 1
        start = int(start_key["i"]) if start_key else 0
        size = min(self.page, page_size)
        chunk = self.conns[start : start + size]
        nxt = {"i": start + size} if start + size < len(self.conns) else None
        return chunk, nxt

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        raise NotImplementedError

    def record_error(self, conn: Connection, message: str) -> None:
        raise NotImplementedError


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
    d = Dispatcher(conns, sqs, QUEUE, 15)
    # When the schedule fires at 18:29
    report = d.dispatch(datetime(2026, 11, 23, 18, 29, tzinfo=UTC))
    # Then three calls (10 + 10 + 3) carried one scheduled sync per connection
    assert [len(c) for c in sqs.calls] == [10, 10, 3]
    assert (report.connections, report.sent, report.failed, report.calls) == (23, 23, 0, 3)
    entries = [e for call in sqs.calls for e in call]
    groups = [e["MessageGroupId"] for e in entries]
    assert groups == [f"clover#{merchant(i)}" for i in range(23)]
    assert {e["MessageDeduplicationId"] for e in entries} == {
        f"clover#{merchant(i)}@2026-11-23T18:15Z" for i in range(23)
    }
    req = SyncRequest.from_json(entries[0]["MessageBody"])
    assert (req.kind, req.merchant_id) == (SyncKind.SCHEDULED, merchant(0))


def test_the_same_slot_gives_the_same_deduplication_ids() -> None:
    conns = Connections(3)
    a, b = FakeSQS(), FakeSQS()
    Dispatcher(conns, a, QUEUE, 15).dispatch(datetime(2026, 11, 23, 18, 16, tzinfo=UTC))
    Dispatcher(conns, b, QUEUE, 15).dispatch(datetime(2026, 11, 23, 18, 29, tzinfo=UTC))
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


def test_the_reconcile_schedule_queues_one_reconcile_per_connection_and_day() -> None:
    # Given 3 active connections and a 7-day reconcile window
    sqs = FakeSQS()
    d = Dispatcher(Connections(3), sqs, QUEUE, 15, reconcile_days=7)
    # When the reconcile schedule fires (twice the same day, then the next day)
    d.dispatch(datetime(2026, 11, 23, 3, 0, tzinfo=UTC), SyncKind.RECONCILE)
    d.dispatch(datetime(2026, 11, 23, 9, 0, tzinfo=UTC), SyncKind.RECONCILE)
    d.dispatch(datetime(2026, 11, 24, 3, 0, tzinfo=UTC), SyncKind.RECONCILE)
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
