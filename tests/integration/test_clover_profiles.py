"""posync reads complete, correct Clover orders under every reading of Clover the sandbox models.

The sandbox's ground truth (``CloverSandbox.orders``: every order whole, every list expanded)
normalized is what a perfect read would export; a sync through ``CloverSource`` over real
HTTP, under each profile (``tests/conftest.py``: ``clover_profile``), must export exactly
that, field for field: line modifiers, line discounts, tax rates, tender, card brand,
refunds, credits and service charges included, with nothing quarantined and nothing flagged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from posync.canonical import normalize, validate
from posync.domain import Connection
from posync.ratelimit import Deadline, Limits
from posync.serialized import Serialized
from posync.sources import DAY_MS, ms_to_iso
from posync.sync import SourceFactory, SyncConfig, SyncService
from posync.syncqueue import SyncKind, SyncRequest
from posync_local.demo import figure_differences
from posync_local.sandbox import CloverSandbox
from tests.integration.test_sync_pipeline import Connections, StaticTokens, clover_token, settings_for
from tests.sandbox.conftest import no_limits

pytestmark = pytest.mark.integration

ORDERS = 1500  # some 5 orders of more than 100 lines, ~90 service charges, ~45 refunds


class KeepingSink:
    """Keeps every canonical order it is given, and every quarantined one's reason."""

    run_id = "profiles"
    wants_checkpoint = False

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.reasons: list[str] = []

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        for o in orders:
            order = o.to_dict() if isinstance(o, Serialized) else dict(o)
            self.orders[order["order_id"]] = order
        return len(orders)

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        self.reasons.append(reason)

    def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self, *args: Any, **kwargs: Any) -> str:
        return "manifest"

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def sandbox() -> Iterator[CloverSandbox]:
    sb = CloverSandbox(port=0, knobs=no_limits(), seed=5).start()
    try:
        yield sb
    finally:
        sb.stop()


def sync_all(sb: CloverSandbox, merchant: str) -> tuple[KeepingSink, Any]:
    token = clover_token(sb, merchant)
    config = SyncConfig(limits={p: Limits.from_env(p, {}) for p in ("clover", "poynt")})
    sink = KeepingSink()
    service = SyncService(
        connections=Connections(Connection(provider="clover", merchant_id=merchant)),
        sources=SourceFactory(settings_for(sb), StaticTokens(token), config),
        sinks=lambda c, run_id: sink,
        enqueue=lambda req, dedup: None,
        config=config,
    )
    since = ms_to_iso(int(time.time() * 1000) - 61 * DAY_MS)
    result = service.run(SyncRequest("clover", merchant, SyncKind.BACKFILL, since=since), Deadline.after(300))
    return sink, result


def test_every_canonical_field_is_right_under_every_profile(
    sandbox: CloverSandbox, clover_profile: str
) -> None:
    # Given the sandbox serving one reading of Clover, and a merchant of 1,500 orders
    sandbox.profile = clover_profile
    merchant = sandbox.add_merchant(orders=ORDERS, days=60)
    truth = {o["id"]: normalize("clover", merchant, o) for o in sandbox.orders(merchant)}
    before = sandbox.stats.snapshot()["requests"]
    # When posync syncs it
    sink, result = sync_all(sandbox, merchant)
    # Then nothing was quarantined and every order is exactly the ground truth's
    assert sink.reasons == []
    assert result.status == "completed"
    assert set(sink.orders) == set(truth)
    for oid, expected in truth.items():
        assert sink.orders[oid] == expected, oid
        validate(sink.orders[oid])
        assert sink.orders[oid]["discrepancies"] == []
    # And every figure is the sandbox's own (its arithmetic, apart from posync's normalizer):
    # subtotal, discount, tax, service charge, total, line totals, tenders, card brands, refunds
    figures = sandbox.figures(merchant)
    wrong = {oid: figure_differences(figures[oid], o) for oid, o in sink.orders.items()}
    assert {oid: w for oid, w in wrong.items() if w} == {}
    # (a wrong figure would be caught)
    some = next(iter(sink.orders.values()))
    assert figure_differences(
        figures[some["order_id"]], {**some, "totals": {**some["totals"], "tax": -1}}
    ) == ["totals.tax"]
    # And the cases that depend on nested collections were there to be got right
    got = list(sink.orders.values())
    assert any(o["totals"]["service_charge"] for o in got)
    assert any(o["refunds"] for o in got)
    assert any(p["card_brand"] for o in got for p in o["payments"])
    assert any(p["tender"] == "cash" for o in got for p in o["payments"])
    assert any(li["discount"] for o in got for li in o["line_items"])
    assert any(len(o["line_items"]) > 100 for o in got)
    # And within three list reads a page, plus the nested reads of orders cut at 100
    after = sandbox.stats.snapshot()["requests"]
    lists = after["GET /v3/merchants/{mId}/orders"] - before.get("GET /v3/merchants/{mId}/orders", 0)
    pages = -(-ORDERS // 1000)
    assert lists <= 3 * (pages + 1)
