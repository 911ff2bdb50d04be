"""Tombstones and corrections order after every live version (newest wins by modified_at)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from posync.canonical import normalize
from posync.serialized import Serialized
from posync.times import iso_to_ms, ms_to_iso
from posync.tombstones import (
    Stored,
    content,
    settle,
    tombstone,
    with_tombstones_settled,
)
from tests.unit.canonical_support import assert_schema_valid

MERCHANT = "MERCHANT12345"
T0 = 1_763_917_418_123


def raw_order(**fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "ORDER00000001",
        "currency": "USD",
        "state": "locked",
        "createdTime": T0,
        "modifiedTime": T0 + 60_000,
        "total": 1000,
        "paymentState": "PAID",
        "lineItems": {"elements": [{"id": "LINE000000001", "name": "Tea", "price": 1000}]},
        "payments": {"elements": [{"id": "PAY0000000001", "amount": 1000, "result": "SUCCESS"}]},
    }
    raw.update(fields)
    return raw


def test_a_clover_order_with_deleted_timestamp_normalizes_to_a_valid_tombstone() -> None:
    # Given Clover shows an order as deleted a minute after its last modification
    live = normalize("clover", MERCHANT, raw_order())
    deleted = normalize("clover", MERCHANT, raw_order(deletedTimestamp=T0 + 120_000))
    # Then it is a tombstone: state deleted, deleted_at, the same content otherwise, valid v1.1
    assert_schema_valid(deleted)
    assert deleted["state"] == "deleted"
    assert deleted["deleted_at"] == ms_to_iso(T0 + 120_000)
    assert deleted["modified_at"] == ms_to_iso(T0 + 120_000)
    assert deleted["totals"] == live["totals"]
    assert deleted["provider_state"] == "locked"
    # And live orders carry no deleted_at (1.0 orders are unchanged)
    assert "deleted_at" not in live


def test_a_deleted_order_listed_at_its_old_modified_time_still_orders_after_the_live_version() -> None:
    # Given a deletion that did not move modifiedTime, and a deletedTimestamp before it (skewed clocks)
    live = normalize("clover", MERCHANT, raw_order())
    deleted = normalize("clover", MERCHANT, raw_order(deletedTimestamp=T0 + 1))
    # Then the tombstone is 1 ms after the live version, never equal (storage would drop it)
    assert iso_to_ms(deleted["modified_at"]) == iso_to_ms(live["modified_at"]) + 1
    # And normalizing it again gives the same version (a re-read is not exported twice)
    assert normalize("clover", MERCHANT, raw_order(deletedTimestamp=T0 + 1)) == deleted


@given(stored_ms=st.integers(T0 - 10**9, T0 + 10**9), own_ms=st.integers(T0 - 10**9, T0 + 10**9))
def test_a_settled_correction_always_orders_after_the_stored_version(stored_ms: int, own_ms: int) -> None:
    # Given any stored version and a re-read whose provider time is before, at or after it
    order = normalize("clover", MERCHANT, raw_order(modifiedTime=own_ms))
    settled = settle(order, Stored(stored_ms, deleted=False))
    # Then what is written orders strictly after the stored version, and keeps a later own time
    assert settled is not None
    written = iso_to_ms(str(settled["modified_at"]))
    assert written > stored_ms
    assert written == max(own_ms, stored_ms + 1)
    # And only modified_at moved
    assert content(settled) == content(order)


def test_a_tombstone_over_a_tombstone_is_dropped_and_over_a_live_version_wins() -> None:
    dead = tombstone(normalize("clover", MERCHANT, raw_order()), T0 + 5)
    assert settle(dead, Stored(T0 + 10**6, deleted=True)) is None
    won = settle(dead, Stored(T0 + 10**6, deleted=False))
    assert won is not None and iso_to_ms(str(won["modified_at"])) == T0 + 10**6 + 1
    assert settle(dead, None) is dead


def test_tombstone_of_a_stored_version_is_after_it_even_when_detected_earlier() -> None:
    # Given a stored version bumped by a correction (1 ms after Clover's time) and a 404 found "now"
    order = normalize("clover", MERCHANT, raw_order())
    stored_ms = iso_to_ms(order["modified_at"]) + 1
    dead = tombstone(order, deleted_ms=stored_ms - 50, after_ms=stored_ms)
    # Then the tombstone is after the stored version; deleted_at says when it was found
    assert iso_to_ms(dead["modified_at"]) == stored_ms + 1
    assert dead["deleted_at"] == ms_to_iso(stored_ms - 50)
    assert_schema_valid(dead)


class FakeVersions:
    def __init__(self, stored: dict[str, Stored]) -> None:
        self.data = stored
        self.calls: list[list[str]] = []

    def stored(self, conn_id: str, order_ids: Any, *, with_content: bool) -> dict[str, Stored]:
        ids = list(order_ids)
        self.calls.append(ids)
        return {i: self.data[i] for i in ids if i in self.data}


def test_a_sync_page_settles_only_its_tombstones_with_one_read() -> None:
    # Given a page of two live orders and one serialized tombstone whose stored version is newer
    live_a = Serialized.of(normalize("clover", MERCHANT, raw_order(id="ORDERAAAAAAAA")))
    live_b = Serialized.of(normalize("clover", MERCHANT, raw_order(id="ORDERBBBBBBBB")))
    dead = Serialized.of(normalize("clover", MERCHANT, raw_order(deletedTimestamp=T0 + 61_000)))
    versions = FakeVersions({"ORDER00000001": Stored(T0 + 90_000, deleted=False)})
    # When the page is settled
    out = with_tombstones_settled(versions, "clover#M", [live_a, dead, live_b])
    # Then one read asked for the tombstone alone, and it now orders after the stored version
    assert versions.calls == [["ORDER00000001"]]
    assert [o["order_id"] for o in out] == ["ORDERAAAAAAAA", "ORDER00000001", "ORDERBBBBBBBB"]
    assert out[0] is live_a and out[2] is live_b
    assert iso_to_ms(str(out[1]["modified_at"])) == T0 + 90_001
    assert out[1]["state"] == "deleted"
    # And a page without tombstones costs no read
    assert with_tombstones_settled(versions, "clover#M", [live_a]) == [live_a]
    assert len(versions.calls) == 1
