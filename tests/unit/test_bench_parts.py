"""The benchmark's own machinery: the ground-truth check, the in-process queue, the lease pool,
the in-memory ports, the call counter and the cold-start ratios (no network, no timing)."""

from __future__ import annotations

import gc
import threading
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from bench.aws_calls import WRU, CallCounter, _figures, write_units
from bench.coldstart import BARE, FLOOR, _floor, _ratios
from bench.common import GcTimer, MemoryConnections, Recorder, TimedHttp, check
from bench.tick import InProcessFifo, LocalAppSlots
from posync.domain import Connection, ConnectionStatus
from posync.ratelimit import BudgetExhausted, Deadline
from posync.transport import HttpReply

# --------------------------------------------------------------------------- check


def test_check_counts_lost_duplicated_stale_and_unexpected_orders() -> None:
    # Given a truth of four orders and what a run read: one twice, one at an older version,
    # one never, and one the truth does not know
    truth = {"A": 10, "B": 20, "C": 30, "D": 40}
    seen = [("A", 10), ("A", 10), ("B", 15), ("C", 30), ("X", 5)]
    # When checked
    result = check(truth, seen)
    # Then each kind of error is counted once
    assert result.as_dict() == {
        "expected": 4,
        "read": 5,
        "lost": 1,
        "duplicated": 1,
        "stale": 1,
        "unexpected": 1,
    }
    assert not result.ok


def test_check_accepts_a_change_log_whose_newest_versions_match() -> None:
    # Given exports holding an older and the current version of an order (a change log)
    truth = {"A": 20, "B": 5}
    seen = [("A", 10), ("B", 5), ("A", 20)]
    # Then nothing is lost, duplicated or stale
    result = check(truth, seen)
    assert result.ok
    assert (result.lost, result.duplicated, result.stale) == (0, 0, 0)


# --------------------------------------------------------------------------- the queue


def _entries(*groups: str, dedup: str = "") -> list[dict[str, Any]]:
    return [
        {
            "Id": str(i),
            "MessageBody": f"body-{g}-{i}",
            "MessageGroupId": g,
            "MessageDeduplicationId": f"{dedup}{g}{i}",
        }
        for i, g in enumerate(groups)
    ]


def test_fifo_hands_out_one_message_per_group_until_it_is_deleted() -> None:
    # Given two messages of group g1 and one of g2
    q = InProcessFifo()
    reply = q.send_message_batch(QueueUrl="q", Entries=_entries("g1", "g1", "g2"))
    assert len(reply["Successful"]) == 3 and reply["Failed"] == []
    # When a worker receives up to ten
    first = q.receive(10, 0)
    # Then it gets one per group, in send order, and g1's second waits
    assert [m.group for m in first] == ["g1", "g2"]
    assert q.receive(10, 0) == []
    assert not q.idle()
    # When g1's message is deleted, its next one is delivered
    q.delete(first[0])
    second = q.receive(10, 0)
    assert [m.body for m in second] == ["body-g1-1"]
    q.delete(first[1])
    q.delete(second[0])
    assert q.idle()


def test_fifo_drops_a_repeated_deduplication_id() -> None:
    q = InProcessFifo()
    q.send_message_batch(QueueUrl="q", Entries=_entries("g1", dedup="slot-"))
    q.send_message_batch(QueueUrl="q", Entries=_entries("g1", dedup="slot-"))
    q.send_message("q", "again", "g1", "other")
    assert q.sent == 2
    assert [m.body for m in q.receive(10, 0)] == ["body-g1-0"]


def test_fifo_receive_wakes_up_when_a_message_arrives() -> None:
    q = InProcessFifo()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(q.receive(1, 5.0)))
    t.start()
    q.send_message("q", "late", "g", "d1")
    t.join(5)
    assert [m.body for m in got] == ["late"]


# --------------------------------------------------------------------------- the lease pool


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_lease_pool_grants_what_is_free_and_waits_when_nothing_is() -> None:
    # Given the app's ten slots and runs that want five each (DynamoAppSlots' policy)
    clock = _FakeClock()
    pool = LocalAppSlots(10, clock=clock, poll_s=0.25)
    a, b, c = pool.handle("clover"), pool.handle("clover"), pool.handle("clover")
    # Then two runs get five each, and a third finds nothing free until one releases
    assert a.lease(5, Deadline(100.0, clock)) == 5
    assert b.lease(5, Deadline(100.0, clock)) == 5
    with pytest.raises(BudgetExhausted):
        c.lease(5, Deadline(clock.now + 0.5, clock))
    assert pool.waits >= 2
    a.release()
    assert c.lease(7, Deadline(clock.now + 1.0, clock)) == 5
    b.release()
    c.release()
    assert pool.handle("clover").lease(10, Deadline(clock.now + 1.0, clock)) == 10
    assert pool.granted == [5, 5, 5, 10]


# --------------------------------------------------------------------------- in-memory ports


def test_memory_connections_page_by_status_and_record_commits() -> None:
    conns = [Connection("clover", f"M{i:012d}") for i in range(5)]
    conns[2].status = ConnectionStatus.REVOKED
    store = MemoryConnections(conns)
    page, key = store.list_by_status("active", page_size=3)
    assert len(page) == 3 and key is not None
    rest, key2 = store.list_by_status("active", page_size=3, start_key=key)
    assert len(rest) == 1 and key2 is None
    assert {c.merchant_id for c in page + rest} == {c.merchant_id for c in conns} - {conns[2].merchant_id}
    store.commit_cursor(conns[0], {"v": 1}, {"status": "completed"})
    assert store.get("clover", conns[0].merchant_id).cursor == {"v": 1}
    assert store.commits == 1


def test_recording_sink_keeps_each_order_version_per_connection() -> None:
    recorder = Recorder()
    sink = recorder.sink(Connection("clover", "ABCDEFGHJKMNP"), "run-1")
    n = sink.write(
        [
            {"order_id": "O1", "modified_at": "2026-01-01T00:00:00.001Z"},
            {"order_id": "O2", "modified_at": "2026-01-01T00:00:01.000Z"},
        ]
    )
    sink.quarantine({"id": "bad"}, "reason")
    assert n == 2
    assert recorder.seen["clover#ABCDEFGHJKMNP"] == [("O1", 1767225600001), ("O2", 1767225601000)]
    assert recorder.orders() == 2
    assert (recorder.pages, recorder.quarantined) == (1, 1)


class _StubSession:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get(self, url: str, **kwargs: Any) -> HttpReply:
        self.calls.append((url, kwargs))
        return HttpReply(200, {}, b"")


def test_timed_http_forwards_requests_and_records_when_they_ran() -> None:
    inner = _StubSession()
    timed = TimedHttp(inner)
    timed.get("http://127.0.0.1/x", params={"a": "1"}, headers={}, timeout=(1, 2))
    timed.get("http://127.0.0.1/y", params=None, headers={}, timeout=(1, 2))
    assert [u for u, _ in inner.calls] == ["http://127.0.0.1/x", "http://127.0.0.1/y"]
    assert inner.calls[0][1] == {"params": {"a": "1"}, "headers": {}, "timeout": (1, 2)}
    assert timed.requests == 2
    assert timed.first_start is not None and timed.last_end is not None
    assert timed.first_start <= timed.last_end


def test_gc_timer_sees_collections_only_while_active() -> None:
    with GcTimer() as timer:
        gc.collect()
    after = list(timer.collections)
    gc.collect()
    assert after[2] >= 1
    assert timer.collections == after
    assert timer.as_dict()["collections"] == after


# --------------------------------------------------------------------------- AWS call counting


def test_call_counter_counts_api_calls_and_s3_put_keys() -> None:
    # Given a real botocore client (stubbed: no network) hooked by the counter
    s3 = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3")
    counter = CallCounter()
    counter.hook_clients([s3, s3])  # hooking twice counts once
    key = "exports/orders/v1/provider=clover/merchant_id=M/dt=2026-01-02/run-1.jsonl.gz"
    with Stubber(s3) as stub:
        stub.add_response("put_object", {}, {"Bucket": "b", "Key": key, "Body": b"x"})
        stub.add_response(
            "put_object", {}, {"Bucket": "b", "Key": "exports/manifests/v1/run.json", "Body": b"{}"}
        )
        # When two PUTs are made
        s3.put_object(Bucket="b", Key=key, Body=b"x")
        s3.put_object(Bucket="b", Key="exports/manifests/v1/run.json", Body=b"{}")
    calls, keys = counter.take()
    # Then both are counted with their keys, and the figures see one partition
    assert calls == {("s3", "PutObject"): 2}
    assert keys == [key, "exports/manifests/v1/run.json"]
    figures = _figures(calls, keys, orders=1000, runs=1, invocations=1)
    assert figures["partitions_touched"] == 1
    assert figures["s3_puts_per_partition"] == 2.0
    assert counter.take()[0] == {}


def test_figures_count_dynamodb_write_units_and_calls_per_thousand_orders() -> None:
    from collections import Counter

    calls = Counter(
        {
            ("dynamodb", "PutItem"): 2000,
            ("dynamodb", "UpdateItem"): 5,
            ("dynamodb", "GetItem"): 7,
            (WRU, "PutItem"): 2100,
            (WRU, "UpdateItem"): 5,
            ("secretsmanager", "GetSecretValue"): 2,
        }
    )
    figures = _figures(calls, [], orders=2000, runs=2, invocations=3)
    assert figures["dynamodb_writes"] == 2005
    assert figures["dynamodb_reads"] == 7
    assert figures["dynamodb_writes_per_1000_orders"] == 1002.5
    assert figures["dynamodb_write_units_per_1000_orders"] == 1052.5
    assert figures["secretsmanager_reads_per_run"] == 1.0
    assert figures["pass"] is True
    assert figures["dynamodb_write_units_as_transactions"] == 4205
    # And 2 KB orders in transactions (4 units each) would be over the target
    calls[(WRU, "PutItem")] = 8000
    assert _figures(calls, [], orders=2000, runs=2, invocations=3)["pass"] is False


def test_write_units_follow_dynamodb_billing() -> None:
    # Given a small item, an item of 1.5 KB, and the same item in a transaction
    small = {"pk": {"S": "a"}, "n": {"N": "12345"}}
    big = {"pk": {"S": "a"}, "payload": {"S": "x" * 1500}}
    # Then a put is its size rounded up to 1 KB, a transaction's put twice that, an update 1
    assert write_units("PutItem", {"Item": small}) == 1
    assert write_units("PutItem", {"Item": big}) == 2
    assert write_units("TransactWriteItems", {"TransactItems": [{"Put": {"Item": big}}, {"Update": {}}]}) == 6
    assert write_units("UpdateItem", {}) == 1


# --------------------------------------------------------------------------- cold start


def test_cold_start_ratios_are_against_the_bare_handler() -> None:
    medians = {
        BARE: {"wall_ms": 100.0, "cpu_ms": 80.0},
        "health": {"wall_ms": 120.0, "cpu_ms": 100.0},
        "worker": {"wall_ms": 250.0, "cpu_ms": 160.0},
    }
    out = _ratios({**medians, FLOOR: {"wall_ms": 130.0, "cpu_ms": 120.0}})
    assert set(out) == {"health", "worker"}  # the libraries' reference is not a handler
    assert out["health"]["ratio_wall"] == 1.2 and out["health"]["pass"] is True
    assert out["worker"]["ratio_wall"] == 2.5 and out["worker"]["ratio_cpu"] == 2.0
    assert out["worker"]["pass"] is False


def test_cold_start_splits_the_worker_into_its_libraries_and_posync() -> None:
    medians = {
        BARE: {"wall_ms": 100.0, "cpu_ms": 80.0},
        FLOOR: {"wall_ms": 125.0, "cpu_ms": 100.0},
        "worker": {"wall_ms": 150.0, "cpu_ms": 120.0},
    }
    out = _floor(medians)
    assert out == {
        "wall_ms": 125.0,
        "ratio_to_bare": 1.25,
        "worker_ratio_to_libraries": 1.2,
        "posync_ms": 25.0,
    }
