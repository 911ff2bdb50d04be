"""OrderRepository + ExportWriter against the embedded AWS: newest wins, exactly once across crashes.

Each test uses a merchant of its own on the module's stage, so tests do not see each other.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from posync import aws
from posync.config import Settings
from posync.exports import ExportWriter, read_manifested
from posync.store import MAX_INLINE_PAYLOAD, OrderRepository
from tests.integration.canonical_orders import merchant, order

DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


def ts(minute: int, ms: int = 0) -> str:
    return f"2026-09-21T10:{minute:02d}:00.{ms:03d}Z"


@contextlib.contextmanager
def calls(service: str, operations: set[str]) -> Iterator[Counter[str]]:
    """Count API calls (botocore before-call) of the given operations on posync's client."""
    seen: Counter[str] = Counter()

    def hook(model: Any, **_: Any) -> None:
        if model.name in operations:
            seen[model.name] += 1

    events = aws.client(service).meta.events
    events.register(f"before-call.{service}", hook)
    try:
        yield seen
    finally:
        events.unregister(f"before-call.{service}", hook)


class Run:
    """One sync run's storage side, as the sync engine drives it: write -> add -> checkpoint -> finish."""

    def __init__(self, settings: Settings, mid: str, run_id: str) -> None:
        self.conn = f"clover#{mid}"
        self.repo = OrderRepository(settings)  # the default: puts in parallel threads
        self.writer = ExportWriter(settings, run_id, "clover", mid)
        self.run_id = run_id

    def page(self, orders: list[dict[str, Any]]) -> list[str]:
        out = self.repo.write(self.conn, self.run_id, orders, ledger=self.writer)
        for o in out:
            self.writer.add(o)
        return [o["order_id"] for o in out]

    def crash(self) -> None:
        """The process dies: nothing more is uploaded or recorded."""
        self.writer.close()


def exported_ids(settings: Settings, mid: str) -> Counter[str]:
    return Counter(o["order_id"] for o in read_manifested(settings, merchant_id=mid))


def test_newest_version_wins_older_and_equal_are_ignored(settings: Settings) -> None:
    # Given order A stored at 10:05
    mid = merchant()
    run = Run(settings, mid, "nw-1")
    assert run.page([order(mid, "A", ts(5), note="v5")]) == ["A"]
    # When an older version and then the same version arrive
    assert run.page([order(mid, "A", ts(1), note="v1")]) == []
    assert run.page([order(mid, "A", ts(5), note="v5-again")]) == []
    # Then the stored order is still the 10:05 version
    assert run.repo.get(run.conn, "A") == order(mid, "A", ts(5), note="v5")
    # When a newer version arrives (1 ms later), Then it replaces the stored one and is exported
    assert run.page([order(mid, "A", ts(5, 1), note="v5.001")]) == ["A"]
    stored = run.repo.get(run.conn, "A")
    assert stored is not None and stored["note"] == "v5.001"
    version = run.repo.stored_version(run.conn, "A")
    assert version is not None and version["run_id"] == "nw-1" and version["modified_at"] == ts(5, 1)
    run.writer.finish()
    assert exported_ids(settings, mid) == Counter({"A": 2})  # the change log: two versions, once each


def test_a_run_that_crashed_before_its_parts_were_durable_is_exported_by_the_next_run(
    settings: Settings,
) -> None:
    # Given run 1 wrote three orders to DynamoDB and died before any checkpoint or manifest
    mid = merchant()
    page = [order(mid, oid, ts(i)) for i, oid in enumerate("ABC")]
    first = Run(settings, mid, "crash-1")
    assert first.page(page) == ["A", "B", "C"]
    first.crash()
    # When run 2 re-reads the same orders from the old cursor
    second = Run(settings, mid, "crash-2")
    again = second.page(page)
    second.writer.finish()
    # Then it exports them, and each appears exactly once in the manifested exports
    assert again == ["A", "B", "C"]
    assert exported_ids(settings, mid) == Counter({"A": 1, "B": 1, "C": 1})
    version = second.repo.stored_version(second.conn, "A")
    assert version is not None and version["run_id"] == "crash-2"


def test_a_committed_run_is_not_exported_again_by_the_lookback_overlap(settings: Settings) -> None:
    # Given run 1 finished (manifest written) with A and B
    mid = merchant()
    first = Run(settings, mid, "ok-1")
    first.page([order(mid, "A", ts(1)), order(mid, "B", ts(2))])
    first.writer.finish()
    # When run 2's lookback brings A and B again, with a new order C
    second = Run(settings, mid, "ok-2")
    out = second.page([order(mid, "A", ts(1)), order(mid, "B", ts(2)), order(mid, "C", ts(3))])
    second.writer.finish()
    # Then only C is exported by run 2, and every order is in the exports once
    assert out == ["C"]
    assert exported_ids(settings, mid) == Counter({"A": 1, "B": 1, "C": 1})


def test_checkpointed_orders_are_not_exported_again_when_the_cursor_commit_was_lost(
    settings: Settings,
) -> None:
    # Given an invocation checkpointed (parts durable) and died before committing its cursor
    mid = merchant()
    page = [order(mid, "A", ts(1)), order(mid, "B", ts(2))]
    first = Run(settings, mid, "cp-1")
    first.page(page)
    assert len(first.writer.checkpoint()) == 1
    first.crash()
    # When the redelivered message continues the same run from the old cursor
    cont = Run(settings, mid, "cp-1")
    assert cont.page([*page, order(mid, "C", ts(3))]) == ["C"]
    cont.writer.finish()
    # Then the manifest still holds the first invocation's part, and nothing twice
    assert exported_ids(settings, mid) == Counter({"A": 1, "B": 1, "C": 1})


def test_a_crash_inside_a_continuation_loses_nothing_and_duplicates_nothing(settings: Settings) -> None:
    # Given: A checkpointed, then B written but the invocation died before the next checkpoint
    mid = merchant()
    first = Run(settings, mid, "cc-1")
    first.page([order(mid, "A", ts(1))])
    first.writer.checkpoint()
    first.page([order(mid, "B", ts(2))])
    first.crash()
    # When the run continues (same run id) and its lookback covers A and B again
    cont = Run(settings, mid, "cc-1")
    assert cont.page([order(mid, "A", ts(1)), order(mid, "B", ts(2))]) == ["B"]
    # And a second lookback inside the same invocation brings B once more
    assert cont.page([order(mid, "B", ts(2))]) == []
    cont.writer.finish()
    # Then A and B are each exported exactly once
    assert exported_ids(settings, mid) == Counter({"A": 1, "B": 1})


def test_a_run_resumed_after_its_manifest_was_written_continues_under_a_new_run_id(
    settings: Settings,
) -> None:
    # Given run "fin-1" finished, but the process died before the cursor was committed
    mid = merchant()
    first = Run(settings, mid, "fin-1")
    first.page([order(mid, "A", ts(1))])
    first.writer.finish()
    # When the message is redelivered and the run goes on from the old cursor, with a new order
    again = Run(settings, mid, "fin-1")
    assert again.page([order(mid, "A", ts(1)), order(mid, "B", ts(2))]) == ["B"]
    key = again.writer.finish()
    # Then the first manifest is untouched and B went out under fin-1-r1, once
    assert key.endswith("/fin-1-r1.json")
    assert exported_ids(settings, mid) == Counter({"A": 1, "B": 1})


def test_an_order_too_big_for_an_item_is_stored_in_s3_and_read_back(settings: Settings) -> None:
    mid = merchant()
    run = Run(settings, mid, "big-1")
    big = order(
        mid,
        "BIG",
        ts(1),
        line_items=[{"name": "x" * 1000, "n": i} for i in range(MAX_INLINE_PAYLOAD // 1000)],
    )
    assert run.page([big]) == ["BIG"]
    assert run.repo.get(run.conn, "BIG") == big
    assert [o["order_id"] for o in run.repo.iter_orders(run.conn)] == ["BIG"]
    # And an equal version later is still recognised as already stored
    assert run.page([big]) == []


def test_a_page_of_1000_stays_within_the_dynamodb_write_budget(settings: Settings) -> None:
    mid = merchant()
    page = [order(mid, f"O{i:04d}", ts(i % 60, i)) for i in range(1000)]
    # Given a first run that stored and committed 1,000 orders except every 5th
    first = Run(settings, mid, "bud-1")
    with calls("dynamodb", DDB_WRITES) as fresh:
        assert len(first.page([o for i, o in enumerate(page) if i % 5])) == 800
        first.writer.checkpoint()
    first.crash()
    # And a second run that wrote every 5th and died before its parts were durable
    crashed = Run(settings, mid, "bud-2")
    assert len(crashed.page([o for i, o in enumerate(page) if i % 5 == 0])) == 200
    crashed.crash()
    # When a third run re-reads all 1,000, every 7th having changed meanwhile: refusals and
    # takeovers spread over the whole page (the worst case for the call count)
    third = Run(settings, mid, "bud-3")
    mixed = [order(mid, o["order_id"], ts(i % 60, i + 1)) if i % 7 == 0 else o for i, o in enumerate(page)]
    with calls("dynamodb", DDB_WRITES) as overlap:
        out = third.page(mixed)
        third.writer.finish()
    # Then new orders cost one non-transactional put each (1 write unit for an item under 1 KB, half
    # a transactional put), plus the checkpoint's one transaction
    assert fresh["PutItem"] == 800 and fresh["TransactWriteItems"] == 1, fresh
    # And the overlap one put per order plus one per takeover of a never-committed version (every 5th
    # not also changed): no order is put twice because another one in its page was refused
    takeovers = sum(1 for i in range(1000) if i % 5 == 0 and i % 7)
    assert overlap["PutItem"] == 1000 + takeovers, overlap
    assert overlap["TransactWriteItems"] == 0, overlap
    # And exactly the changed (every 7th) and the never-committed (every 5th) orders were exported again
    assert sorted(out) == sorted(o["order_id"] for i, o in enumerate(page) if i % 7 == 0 or i % 5 == 0)


def test_one_stored_version_does_not_stop_the_rest_of_the_page(settings: Settings) -> None:
    # Given order O0050 stored and exported at a version newer than the page's copy
    mid = merchant()
    page = [order(mid, f"O{i:04d}", ts(1, i)) for i in range(100)]
    first = Run(settings, mid, "one-1")
    assert first.page([order(mid, "O0050", ts(2))]) == ["O0050"]
    first.writer.finish()
    # When a run writes the 100-order page in parallel puts
    run = Run(settings, mid, "one-2")
    with calls("dynamodb", {"PutItem"}) as puts:
        out = run.page(page)
    run.writer.finish()
    # Then the 99 others are stored and exported with one put each, O0050 keeps its newer version
    assert sorted(out) == sorted(o["order_id"] for o in page if o["order_id"] != "O0050")
    assert puts["PutItem"] == 100
    assert run.repo.get(run.conn, "O0050")["modified_at"] == ts(2)  # type: ignore[index]
    assert exported_ids(settings, mid) == Counter({o["order_id"]: 1 for o in page})


def test_a_run_stays_within_two_s3_puts_per_partition(settings: Settings) -> None:
    # Given 1,000 orders over three days, in modified order (as the sources page them)
    mid = merchant()
    days = ["2026-09-19", "2026-09-20", "2026-09-21"]
    page = [order(mid, f"O{i:04d}", f"{days[i * 3 // 1000]}T10:00:00.{i % 1000:03d}Z") for i in range(1000)]
    s3_writes = {"PutObject", "CopyObject", "UploadPart", "CreateMultipartUpload"}
    # When one invocation syncs them all (checkpoint at its end, then finish)
    with calls("s3", s3_writes) as one:
        run = Run(settings, mid, "s3b-1")
        run.page(page)
        run.writer.checkpoint()
        run.writer.finish()
    # Then: one part per partition and the manifest
    assert sum(one.values()) == len(days) + 1 <= 2 * len(days), one
    # When another merchant's run takes two invocations (a continuation after 600 orders)
    mid2 = merchant()
    page2 = [dict(o, merchant_id=mid2) for o in page]
    with calls("s3", s3_writes) as two:
        first = Run(settings, mid2, "s3b-2")
        first.page(page2[:600])  # days 1 and 2
        first.writer.checkpoint()
        cont = Run(settings, mid2, "s3b-2")
        cont.page(page2[600:])  # days 2 and 3
        cont.writer.checkpoint()
        cont.writer.finish()
    # Then: each invocation put one part per partition it touched, plus the manifest
    assert sum(two.values()) == 2 + 2 + 1 <= 2 * len(days), two
    assert exported_ids(settings, mid2) == Counter({o["order_id"]: 1 for o in page2})
