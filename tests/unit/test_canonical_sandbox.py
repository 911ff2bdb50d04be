"""Cross-check with the provider sandboxes' seeded data (no server is started: the sandboxes
generate their ground-truth orders in process). Every order the demo, the integration tests
and the benchmarks will push through ``normalize`` must normalize, validate and keep its totals.
"""

from __future__ import annotations

from typing import Any

from posync.canonical import normalize, validate
from posync_local.demo import figure_differences
from posync_local.sandbox import CloverSandbox, PoyntSandbox
from tests.unit.canonical_support import assert_schema_valid

PAID_CLOVER = ("paid", "refunded", "partially_refunded")


def _adds_up(order: dict[str, Any]) -> None:
    t = order["totals"]
    assert t["subtotal"] + t["discount"] + t["service_charge"] + t["tax"] == t["total"], order["order_id"]
    counted = [p for p in order["payments"] if p["status"] in ("succeeded", "refunded")]
    assert t["paid"] == sum(p["amount"] for p in counted)
    assert t["refunded"] == sum(r["amount"] for r in order["refunds"])


def test_every_clover_sandbox_order_normalizes_with_its_totals(clover_profile: str) -> None:
    # Given a Clover sandbox (under each of its profiles) with a merchant per currency, some
    # orders modified since
    sandbox = CloverSandbox(seed=7, profile=clover_profile)
    seen_states: set[str] = set()
    longest = 0
    currencies = ("USD", "CAD", "EUR", "GBP", "JPY") if clover_profile == "documented" else ("USD", "JPY")
    for currency in currencies:  # the other profiles change service charges only: two currencies do
        merchant = sandbox.add_merchant(orders=400, currency=currency)
        sandbox.modify_orders(merchant, 40)
        figures = sandbox.figures(merchant)
        for raw in sandbox.orders(merchant):
            # When each order is normalized
            order = normalize("clover", merchant, raw)
            # Then its figures are the sandbox's own (computed apart from the normalizer), unflagged
            assert figure_differences(figures[raw["id"]], order) == [], raw["id"]
            assert order["discrepancies"] == []
            # Then it is valid, keeps Clover's total, and its tax is exactly the per-rate breakdown
            validate(order)
            _adds_up(order)
            assert order["totals"]["total"] == raw["total"]
            assert order["currency"] == currency
            if order["line_items"] and not raw.get("taxRemoved"):
                assert sum(x["amount"] for x in order["taxes"]) == order["totals"]["tax"], order["order_id"]
            if order["state"] in PAID_CLOVER:
                assert order["totals"]["paid"] == order["totals"]["total"], order["order_id"]
            seen_states.add(order["state"])
            longest = max(longest, len(order["line_items"]))
    assert_schema_valid(order)
    assert {"open", "paid", "hidden"} <= seen_states
    assert longest <= 250


def test_every_poynt_sandbox_order_normalizes_with_its_totals() -> None:
    sandbox = PoyntSandbox(seed=7)
    seen_states: set[str] = set()
    for currency in ("USD", "CAD", "EUR", "JPY"):
        business = sandbox.add_merchant(orders=400, currency=currency)
        sandbox.modify_orders(business, 40)
        for raw in sandbox.orders(business):
            order = normalize("poynt", business, raw)
            validate(order)
            _adds_up(order)
            assert order["totals"]["total"] == raw["amounts"]["netTotal"]
            if order["state"] in ("completed", "paid"):
                assert order["totals"]["paid"] == order["totals"]["total"], order["order_id"]
            seen_states.add(order["state"])
    assert_schema_valid(order)
    assert {"open", "completed", "cancelled"} <= seen_states
