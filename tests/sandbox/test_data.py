"""Seeded data: the same seed gives the same merchants and orders; totals add up by the rules in
``posync_local.sandbox.data``; the mix has the cases a sync and a normalizer must handle."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from posync_local.sandbox import CloverSandbox, PoyntSandbox
from posync_local.sandbox.data import SUPPORTED_CURRENCIES, rhu

pytestmark = pytest.mark.integration


def elements(order: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = order.get(name, {}).get("elements", [])
    return out


def clover_total(order: dict[str, Any]) -> tuple[int, int]:
    """(total, tax) recomputed from the line items by the documented rule."""
    nets: list[tuple[int, list[int]]] = []
    for li in elements(order, "lineItems"):
        qty = li.get("unitQty", 1000)
        mods = sum(m["amount"] for m in elements(li, "modifications"))
        gross = rhu((li["price"] + mods) * qty, 1000)
        net = gross
        for d in elements(li, "discounts"):
            net += d["amount"] if "amount" in d else -rhu(gross * d["percentage"], 100)
        nets.append((net, [t["rate"] for t in elements(li, "taxRates")]))
    subtotal = sum(n for n, _ in nets)
    discount = 0
    for d in elements(order, "discounts"):
        discount += d["amount"] if "amount" in d else -rhu(subtotal * d["percentage"], 100)
    by_rate: Counter[int] = Counter()
    for net, rates in nets:
        for rate in rates:
            by_rate[rate] += net
    tax = sum(
        rhu(base * (subtotal + discount) * rate, subtotal * 10_000_000) for rate, base in by_rate.items()
    )
    # the service charge (a definition: percent x 10,000) on the nets after discounts, untaxed
    sc = order.get("serviceCharge")
    charge = rhu((subtotal + discount) * sc["percentageDecimal"], 1_000_000) if sc else 0
    if sc:
        assert sum(p["serviceCharge"]["amount"] for p in elements(order, "payments")) in (0, charge)
    return subtotal + discount + charge + tax, tax


def test_same_seed_same_merchants_and_orders_and_another_seed_differs() -> None:
    # Given two sandboxes with the same seed and time anchor (not started: the data needs no server)
    anchor = 1_700_000_000_000
    a, b = CloverSandbox(seed=11, anchor_ms=anchor), CloverSandbox(seed=11, anchor_ms=anchor)
    c = CloverSandbox(seed=12, anchor_ms=anchor)
    for s in (a, b, c):
        s.add_merchant(orders=150, currency="EUR")
        s.add_merchant(orders=50, currency="JPY")
    # Then they hold the same merchants and the same orders, and another seed does not
    assert a.merchants == b.merchants
    assert a.merchants != c.merchants
    for mid in a.merchants:
        assert a.orders(mid) == b.orders(mid)
    assert [o["id"] for o in a.orders(a.merchants[0])] != [o["id"] for o in c.orders(c.merchants[0])]
    p1, p2 = PoyntSandbox(seed=5, anchor_ms=anchor), PoyntSandbox(seed=5, anchor_ms=anchor)
    assert p1.add_merchant(orders=80) == p2.add_merchant(orders=80)
    assert p1.orders(p1.merchants[0]) == p2.orders(p2.merchants[0])


def test_merchant_ids_have_the_providers_shapes() -> None:
    clover, poynt = CloverSandbox(seed=1), PoyntSandbox(seed=1)
    mid = clover.add_merchant(orders=1)
    bid = poynt.add_merchant(orders=1)
    from posync.domain import check_merchant_id

    assert check_merchant_id("clover", mid) == mid
    assert check_merchant_id("poynt", bid) == bid
    with pytest.raises(ValueError, match="13 upper-case"):
        clover.add_merchant("lowercase")
    with pytest.raises(ValueError, match="already exists"):
        clover.add_merchant(mid)
    with pytest.raises(ValueError, match="currency"):
        clover.add_merchant(currency="XYZ")


@pytest.mark.parametrize("currency", SUPPORTED_CURRENCIES)
def test_clover_totals_add_up(currency: str) -> None:
    clover = CloverSandbox(seed=21)
    mid = clover.add_merchant(orders=700, currency=currency)
    orders = clover.orders(mid)
    ids = [o["id"] for o in orders]
    assert len(set(ids)) == len(ids)
    nested_ids = [
        x["id"] for o in orders for name in ("lineItems", "payments", "refunds") for x in elements(o, name)
    ]
    assert len(set(nested_ids)) == len(nested_ids)
    for o in orders:
        assert o["currency"] == currency
        total, tax = clover_total(o)
        assert o["total"] == total, o["id"]
        assert o["createdTime"] <= o["modifiedTime"]
        payments = elements(o, "payments")
        if o["state"] in ("locked", "paid"):
            assert sum(p["amount"] for p in payments) == o["total"]
            assert sum(p["taxAmount"] for p in payments) == tax
            assert all(p["result"] == "SUCCESS" for p in payments)
            assert all(p["createdTime"] <= o["modifiedTime"] for p in payments)
        else:
            assert payments == []
        for r in elements(o, "refunds"):
            paid = next(p for p in payments if p["id"] == r["payment"]["id"])
            assert 0 < r["amount"] <= paid["amount"]
            assert 0 <= r["taxAmount"] <= r["amount"]
            assert r["createdTime"] <= o["modifiedTime"]


def test_clover_mix_has_the_cases_a_sync_must_handle() -> None:
    clover = CloverSandbox(seed=7)
    mid = clover.add_merchant(orders=3000, currency="USD", days=120)
    orders = clover.orders(mid)
    states = Counter(o["state"] for o in orders)
    assert states[None] > 0  # hidden orders
    assert states["open"] > 0
    assert states["locked"] > states["open"]
    lines = [li for o in orders for li in elements(o, "lineItems")]
    counts = [len(elements(o, "lineItems")) for o in orders]
    assert sum(1 <= n <= 8 for n in counts) / len(counts) > 0.97
    assert any(n > 100 for n in counts)
    assert any("unitQty" in li for li in lines)
    assert any(elements(li, "modifications") for li in lines)
    line_discounts = [d for li in lines for d in elements(li, "discounts")]
    assert any("amount" in d for d in line_discounts)
    assert any("percentage" in d for d in line_discounts)
    assert any(elements(o, "discounts") for o in orders)
    assert any(not elements(li, "taxRates") for li in lines)  # tax-exempt items
    payments = [p for o in orders for p in elements(o, "payments")]
    tenders = Counter(p["tender"]["labelKey"] for p in payments)
    assert tenders["com.clover.tender.cash"] > 0
    assert tenders["com.clover.tender.credit_card"] > 0
    assert any(p["tipAmount"] > 0 for p in payments)
    assert any(len(elements(o, "payments")) == 2 for o in orders)  # split payments
    refunded = [o for o in orders if elements(o, "refunds")]
    assert 0.01 < len(refunded) / len(orders) < 0.06
    assert {o["paymentState"] for o in refunded} >= {"REFUNDED", "PARTIALLY_REFUNDED"}
    modified = Counter(o["modifiedTime"] for o in orders)
    assert any(n > 1 for n in modified.values())  # several orders in the same millisecond
    assert all(card["cardTransaction"]["last4"].isdigit() for card in payments if "cardTransaction" in card)
    # service charges (a definition on the order, an amount on each payment) on ~6 % of orders
    charged = [o for o in orders if "serviceCharge" in o]
    assert 0.03 < len(charged) / len(orders) < 0.09
    assert all(set(o["serviceCharge"]) == {"id", "name", "enabled", "percentageDecimal"} for o in charged)
    assert any(elements(o, "discounts") for o in charged)  # the basis matters for some


def test_poynt_amounts_add_up_and_the_mix_is_realistic() -> None:
    poynt = PoyntSandbox(seed=9)
    bid = poynt.add_merchant(orders=2000, currency="CAD")
    orders = poynt.orders(bid)
    statuses = Counter(o["statuses"]["status"] for o in orders)
    assert statuses["OPENED"] > 0
    assert statuses["CANCELLED"] > 0
    actions: Counter[str] = Counter()
    for o in orders:
        a = o["amounts"]
        assert a["currency"] == "CAD"
        assert o["context"]["businessId"] == bid
        sub = disc = tax = fee = 0
        for item in o["items"]:
            gross = rhu(round(item["unitPrice"] * item["quantity"] * 1000), 1000)
            assert item["discount"] == sum(d["amount"] for d in item["discounts"])
            assert item["tax"] == sum(t["amount"] for t in item["taxes"])
            assert item["discount"] <= 0
            sub += gross
            disc += item["discount"]
            tax += item["tax"]
            fee += item["fee"]
        disc += sum(d["amount"] for d in o["discounts"])
        assert (a["subTotal"], a["discountTotal"], a["taxTotal"], a["feeTotal"]) == (sub, disc, tax, fee)
        assert a["netTotal"] == a["subTotal"] + a["discountTotal"] + a["taxTotal"] + a["feeTotal"]
        txns = {t["id"]: t for t in o["transactions"]}
        for t in o["transactions"]:
            actions[t["action"]] += 1
            assert (
                t["amounts"]["transactionAmount"] == t["amounts"]["orderAmount"] + t["amounts"]["tipAmount"]
            )
            if t["action"] in ("SALE", "CAPTURE") and t["status"] in ("CAPTURED", "REFUNDED"):
                assert t["amounts"]["orderAmount"] == a["netTotal"]
            if t["action"] == "REFUND":
                parent = txns[t["parentId"]]
                assert parent["action"] in ("SALE", "CAPTURE")
                assert 0 < t["amounts"]["orderAmount"] <= parent["amounts"]["orderAmount"]
            if t["action"] == "CAPTURE":
                assert txns[t["parentId"]]["action"] == "AUTHORIZE"
        if o["statuses"]["status"] == "OPENED":
            assert o["transactions"] == []
    assert {"SALE", "AUTHORIZE", "CAPTURE", "REFUND"} <= set(actions)
    funding = Counter(t["fundingSource"]["type"] for o in orders for t in o["transactions"])
    assert funding["CASH"] > 0
    assert funding["CREDIT_DEBIT"] > 0
    assert any(t["status"] == "VOIDED" for o in orders for t in o["transactions"])
    assert any(i["quantity"] != int(i["quantity"]) for o in orders for i in o["items"])


def test_jpy_has_no_minor_unit_and_amounts_are_whole_yen() -> None:
    clover = CloverSandbox(seed=4)
    mid = clover.add_merchant(orders=100, currency="JPY")
    prices = [li["price"] for o in clover.orders(mid) for li in elements(o, "lineItems")]
    assert all(isinstance(p, int) for p in prices)
    assert min(prices) >= 100  # yen, not cents of a yen


def test_the_fragment_cache_keeps_to_its_budget_and_never_mixes_versions() -> None:
    from posync_local.sandbox.orderbook import FragmentCache, OrderRec, OrderState

    # Given a cache of 5 kB and 20 orders of 1 kB each
    cache = FragmentCache(5_000)
    recs = [OrderRec(OrderState(i, f"O{i}", 0, 0, 0)) for i in range(20)]
    for i, rec in enumerate(recs):
        cache.put(rec, ("k", 0), bytes([i]) * 1_000)
        # Then it never holds more than its budget
        assert cache.size <= 5_000
    # And the newest entries are served, the oldest were dropped
    assert cache.get(recs[-1], ("k", 0)) == bytes([19]) * 1_000
    assert cache.get(recs[0], ("k", 0)) is None
    # And a key of another version (or expand set) never matches
    assert cache.get(recs[-1], ("k", 1)) is None
    assert cache.get(recs[-1], ("other", 0)) is None
    cache.drop(recs[-1])
    assert cache.get(recs[-1], ("k", 0)) is None
    assert cache.size == 4_000
    cache.clear()
    assert cache.size == 0
    assert all(r.cached is None for r in recs)
