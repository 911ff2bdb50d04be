"""Older Poynt orders cancelled or refunded between runs are exported at their new version,
under every sandbox profile (what startAt/endAt filter, row order, link rel, status spelling).

Invariant (``Chaos.verify``): every sandbox order is stored once at its latest version and in the
manifested exports, no version exported twice; and the exported latest version of each changed
order says what happened to it (cancelled, or refunded by the amount).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from posync.exports import latest, read_manifested
from posync_local.sandbox.poynt import DEFAULT_PROFILE, PROFILES, PoyntSandbox
from tests.chaos.conftest import Chaos


@pytest.fixture
def poynt(chaos: Chaos) -> Iterator[PoyntSandbox]:
    sb = chaos.sandbox("poynt")
    assert isinstance(sb, PoyntSandbox)
    yield sb
    sb.use_profile(DEFAULT_PROFILE)


@pytest.mark.parametrize("profile", PROFILES)
def test_older_orders_cancelled_or_refunded_between_runs_are_exported_at_their_new_version(
    chaos: Chaos, poynt: PoyntSandbox, profile: str
) -> None:
    # Given a business synced under this profile, orders moving while they were paged
    poynt.use_profile(profile)
    m = chaos.merchant("poynt", orders=90, days=40)
    poynt.knobs.modify_during_paging = 1
    assert chaos.drain().failures == 0
    poynt.knobs.modify_during_paging = 0
    chaos.tick()
    # When the oldest paid orders are cancelled, partly refunded and fully refunded
    by_age = sorted(poynt.orders(m), key=lambda o: o["createdAt"])
    paid = [
        o for o in by_age if o["amounts"].get("capturedTotals") and o["statuses"]["status"] != "CANCELLED"
    ]
    cancelled = [o["id"] for o in paid[:3]]
    partly = [(o["id"], max(1, o["amounts"]["capturedTotals"]["orderAmount"] // 3)) for o in paid[3:6]]
    fully = [o["id"] for o in paid[6:8]]
    for oid in cancelled:
        poynt.cancel_order(m, oid)
    for oid, amount in partly:
        poynt.refund_order(m, oid, amount)
    for oid in fully:
        poynt.refund_order(m, oid)
    chaos.provider_faults["older_orders_changed"] += len(cancelled) + len(partly) + len(fully)
    # Then the next scheduled runs export each at its new version, saying what happened
    chaos.settle()
    chaos.verify()
    chaos.rt.apply_env()
    now = {
        o["order_id"]: o for o in latest(read_manifested(chaos.rt.settings, provider="poynt", merchant_id=m))
    }
    for oid in cancelled:
        assert now[oid]["state"] == "cancelled"
        assert now[oid]["totals"]["paid"] == 0
    for oid, amount in partly:
        assert now[oid]["state"] == "partially_refunded"
        assert now[oid]["totals"]["refunded"] == amount
    for oid in fully:
        assert now[oid]["state"] == "refunded"
        assert now[oid]["totals"]["refunded"] == now[oid]["totals"]["paid"]
