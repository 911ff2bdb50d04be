"""The reconcile sink: only what differs from storage is exported; the sweep tombstones what is gone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from posync.canonical import normalize
from posync.ratelimit import BudgetExhausted, Deadline
from posync.reconcile import ReconcileSink
from posync.sources.clover_deletions import Presence
from posync.times import iso_to_ms, ms_to_iso
from posync.tombstones import Stored

MERCHANT = "MERCHANT12345"
T0 = 1_763_917_418_123


def order(oid: str, modified: int = T0, refunded: int = 0) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": oid,
        "currency": "USD",
        "state": "locked",
        "createdTime": T0 - 10_000,
        "modifiedTime": modified,
        "total": 1000,
        "paymentState": "PARTIALLY_REFUNDED" if refunded else "PAID",
        "lineItems": {"elements": [{"id": "LINE000000001", "price": 1000}]},
        "payments": {"elements": [{"id": "PAY0000000001", "amount": 1000, "result": "SUCCESS"}]},
    }
    if refunded:
        raw["refunds"] = {"elements": [{"id": "REF0000000001", "amount": refunded, "payment": {"id": "P"}}]}
    return normalize("clover", MERCHANT, raw)


class Store:
    """Storage, newest wins by modified_at (the real repository's contract), and the exports."""

    def __init__(self, orders: Iterable[dict[str, Any]]) -> None:
        self.rows = {o["order_id"]: dict(o) for o in orders}
        self.exported: list[dict[str, Any]] = []
        self.conn_id = "clover#" + MERCHANT
        self.run_id = "run"
        self.repository, self.exports = self, self
        self.batch_reads = 0

    # StoredVersions / WindowIndex
    def stored(self, conn_id: str, order_ids: Iterable[str], *, with_content: bool) -> dict[str, Stored]:
        self.batch_reads += 1
        return {
            i: Stored(
                iso_to_ms(self.rows[i]["modified_at"]), self.rows[i]["state"] == "deleted", self.rows[i]
            )
            for i in order_ids
            if i in self.rows
        }

    def live_in_window(self, conn_id: str, a: int, b: int) -> Iterator[tuple[str, int]]:
        for oid in sorted(self.rows):
            ms = iso_to_ms(self.rows[oid]["modified_at"])
            if a <= ms < b and self.rows[oid]["state"] != "deleted":
                yield oid, ms

    # OrderSink
    def write(self, conn_id: str, run_id: str, orders: Sequence[Mapping[str, Any]], **_: Any) -> list[Any]:
        out = []
        for o in orders:
            old = self.rows.get(str(o["order_id"]))
            if old is None or iso_to_ms(str(o["modified_at"])) > iso_to_ms(old["modified_at"]):
                self.rows[str(o["order_id"])] = dict(o)
                out.append(o)
        return out

    # ExportSink
    def add(self, o: Mapping[str, Any]) -> None:
        self.exported.append(dict(o))

    @property
    def wants_checkpoint(self) -> bool:
        return False


def sink(store: Store) -> ReconcileSink:
    return ReconcileSink(store, store, clock=lambda: (T0 + 3_600_000) / 1000)  # type: ignore[arg-type]


def sweep(s: ReconcileSink, store: Store, presence: Any, window: tuple[int, int]) -> None:
    nothing: Any = None  # the fake presence check needs no transport or deadline
    s.sweep(
        index=store,
        presence=presence,
        transport=nothing,
        merchant_id=MERCHANT,
        window=window,
        deadline=nothing,
    )


def test_only_orders_whose_content_differs_are_exported_and_counted_by_cause() -> None:
    # Given three stored orders
    store = Store([order("ORDERA0000001"), order("ORDERB0000002"), order("ORDERC0000003")])
    s = sink(store)
    # When a reconcile re-reads: A unchanged, B refunded without its modifiedTime moving,
    # C changed later, D never stored
    page = [
        order("ORDERA0000001"),
        order("ORDERB0000002", refunded=300),
        order("ORDERC0000003", modified=T0 + 5, refunded=100),
        order("ORDERD0000004"),
    ]
    exported = s.write(page)
    # Then three versions went out, in one batched read of the stored versions
    assert exported == 3 and store.batch_reads == 1
    assert [o["order_id"] for o in store.exported] == ["ORDERB0000002", "ORDERC0000003", "ORDERD0000004"]
    # B's new version orders 1 ms after the stored one (its own time did not move), C keeps its own
    assert store.rows["ORDERB0000002"]["modified_at"] == ms_to_iso(T0 + 1)
    assert store.rows["ORDERB0000002"]["totals"]["refunded"] == 300
    assert store.rows["ORDERC0000003"]["modified_at"] == ms_to_iso(T0 + 5)
    assert s.take_tally() == {
        "corrections": 3,
        "silent": 1,
        "changed": 1,
        "missing": 1,
        "deleted": 0,
        "unchanged": 1,
    }
    # And a second identical pass exports nothing
    s.write(page[:2])
    assert s.take_tally()["corrections"] == 0 and len(store.exported) == 3


def test_the_absence_sweep_tombstones_what_is_gone_and_resumes_after_a_budget_stop() -> None:
    # Given four stored orders of the window; the list showed A; B and D are gone (404, deletedTimestamp)
    store = Store([order(f"ORDER{c}000000{i}") for i, c in enumerate("ABCD", 1)])
    s = sink(store)
    s.write([order("ORDERA0000001")])
    gone = {"ORDERB0000002": Presence(True), "ORDERD0000004": Presence(True, deleted_ms=T0 + 50)}
    asked: list[str] = []
    budget = {"left": 2}

    def presence(transport: Any, merchant_id: str, oid: str, deadline: Deadline) -> Presence:
        if budget["left"] == 0:
            raise BudgetExhausted("no time")
        budget["left"] -= 1
        asked.append(oid)
        return gone.get(oid, Presence(False))

    window = (T0 - 1, T0 + 1)
    # When the sweep runs out of time after two reads
    with pytest.raises(BudgetExhausted):
        sweep(s, store, presence, window)
    # Then B (404) is already a tombstone, found at the sweep's clock; the sweep knows where it stopped
    assert asked == ["ORDERB0000002", "ORDERC0000003"] and s.sweep_after == "ORDERC0000003"
    assert store.rows["ORDERB0000002"]["state"] == "deleted"
    assert store.rows["ORDERB0000002"]["deleted_at"] == ms_to_iso(T0 + 3_600_000)
    # When it goes on (a new invocation: nothing seen in memory, the position kept)
    resumed = sink(store)
    resumed.sweep_after = s.sweep_after
    budget["left"] = 5
    sweep(resumed, store, presence, window)
    # Then A (shown by the list) was never read by id; D is a tombstone at Clover's deletion time
    assert asked == ["ORDERB0000002", "ORDERC0000003", "ORDERD0000004"]
    assert store.rows["ORDERD0000004"]["deleted_at"] == ms_to_iso(T0 + 50)
    assert iso_to_ms(store.rows["ORDERD0000004"]["modified_at"]) == T0 + 50
    assert [store.rows[i]["state"] for i in ("ORDERA0000001", "ORDERC0000003")] == ["paid", "paid"]
    assert s.tally["deleted"] + resumed.tally["deleted"] == 2
