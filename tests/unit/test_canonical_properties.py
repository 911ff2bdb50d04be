"""Property tests: generated valid Clover and Poynt orders always normalize to schema-valid
canonical orders whose totals are preserved and add up; malformed mutations always raise
MalformedOrder naming the field (never another exception, never the value).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posync.canonical import fields, normalize, validate
from posync.canonical.fields import epoch_ms
from posync.errors import MalformedOrder
from tests.unit.canonical_support import (
    BUSINESS_ID,
    CloverExpected,
    PoyntExpected,
    Raw,
    assert_schema_valid,
    clover_orders,
    poynt_orders,
    schema_errors,
)

CLOVER_MERCHANT = "MERCHANT12345"
BOUNDED = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
# A value that must never leak into a reason (it stands for personal data or a secret).
CANARY = "canary-4111111111111111"


def _strings(value: Any) -> str:
    """Every string (keys and values) in a JSON value, one per line: what could carry a leak."""
    if isinstance(value, str):
        return value + "\n"
    if isinstance(value, dict):
        return "".join(_strings(k) + _strings(v) for k, v in value.items())
    if isinstance(value, list):
        return "".join(_strings(v) for v in value)
    return ""


def _assert_adds_up(order: dict[str, Any]) -> None:
    t = order["totals"]
    assert t["subtotal"] + t["discount"] + t["service_charge"] + t["tax"] == t["total"]
    assert t["discount"] <= 0
    counted = [p for p in order["payments"] if p["status"] in ("succeeded", "refunded")]
    assert t["paid"] == sum(p["amount"] for p in counted)
    assert t["tip"] == sum(p["tip"] for p in counted)
    assert t["refunded"] == sum(r["amount"] for r in order["refunds"])


# ---------------------------------------------------------------- valid orders


@BOUNDED
@given(clover_orders())
def test_clover_orders_normalize_to_valid_orders_with_preserved_totals(
    case: tuple[Raw, CloverExpected],
) -> None:
    # Given a valid Clover order and the totals the documented arithmetic gives it
    raw, expected = case
    before = json.dumps(raw, sort_keys=True)
    # When it is normalized
    order = normalize("clover", CLOVER_MERCHANT, raw)
    # Then it satisfies the JSON Schema (jsonschema and the layer's own validator)
    assert_schema_valid(order)
    validate(order)
    # And the provider's total is preserved, the components add up and match the model
    t = order["totals"]
    assert t["total"] == expected.total
    _assert_adds_up(order)
    assert t["discount"] == expected.discount
    assert sum(d["amount"] for d in order["discounts"]) == t["discount"]
    assert t["service_charge"] == expected.service_charge
    assert (t["paid"], t["tip"], t["refunded"]) == (expected.paid, expected.tip, expected.refunded)
    if expected.subtotal is not None:
        assert t["subtotal"] == expected.subtotal
    if expected.tax is not None:
        assert t["tax"] == expected.tax
        if order["line_items"] and raw.get("taxRemoved") is not True:
            assert sum(x["amount"] for x in order["taxes"]) == t["tax"]
    assert {x["name"]: x["amount"] for x in order["taxes"]} == expected.taxes
    # And identity and state follow the raw order
    assert order["order_id"] == raw["id"]
    assert order["provider_state"] == raw.get("state")
    assert (order["state"] == "hidden") == (raw.get("state") is None)
    if raw.get("state") is not None and raw.get("paymentState") in ("REFUNDED", "CREDITED"):
        assert order["state"] == "refunded"
    # And the raw order was not touched, and nothing beyond the contract leaked through
    assert json.dumps(raw, sort_keys=True) == before
    text = _strings(order)  # strings only: a total of -42429 is not a card number
    assert "555-0100" not in text and "4242" not in text and "424242" not in text


@BOUNDED
@given(poynt_orders())
def test_poynt_orders_normalize_to_valid_orders_with_preserved_totals(
    case: tuple[Raw, PoyntExpected],
) -> None:
    # Given a valid Poynt order built from a payments model (auth+capture pairs, voids, refunds)
    raw, expected = case
    # When it is normalized
    order = normalize("poynt", BUSINESS_ID, raw)
    # Then it satisfies the JSON Schema
    assert_schema_valid(order)
    validate(order)
    # And netTotal is preserved and the amounts map one to one
    t = order["totals"]
    assert (t["total"], t["subtotal"], t["discount"], t["tax"], t["service_charge"]) == (
        expected.total,
        expected.subtotal,
        expected.discount,
        expected.tax,
        expected.fee,
    )
    _assert_adds_up(order)
    # And each authorization chain is one payment, counted once; refunds point at the chain's root
    assert len(order["payments"]) == expected.payments
    assert (t["paid"], t["tip"], t["refunded"]) == (expected.paid, expected.tip, expected.refunded)
    assert [r["payment_id"] for r in order["refunds"]] == expected.refund_payment_ids
    assert [x["total"] for x in order["line_items"]] == expected.line_totals
    # And times are RFC 3339 UTC with milliseconds, whatever ISO shape Poynt used
    assert (order["created_at"], order["modified_at"]) == (expected.created_at, expected.modified_at)
    # And the state follows the documented mapping
    status = raw["statuses"]["status"]
    if status == "CANCELLED":
        assert order["state"] == "cancelled"
    elif expected.refunded:
        basis = expected.paid or expected.total
        assert order["state"] == ("refunded" if expected.refunded >= basis else "partially_refunded")
    elif status == "COMPLETED":
        assert order["state"] == "completed"
    else:
        assert order["state"] == ("paid" if 0 < expected.total <= expected.paid else "open")
    assert "1111" not in _strings(order["payments"])


# ---------------------------------------------------------------- malformed mutations

Mutation = tuple[str, Callable[[Raw], None]]


def _set(*path: Any, value: Any) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        node: Any = raw
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[path[-1]] = value

    return mutate


def _delete(*keys: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        for key in keys:
            raw.pop(key, None)

    return mutate


def _append(list_key: str, element: Any, nested: bool = True) -> Callable[[Raw], None]:
    """Append a bad element to a nested list (creating the list if the order has none)."""

    def mutate(raw: Raw) -> None:
        current = raw.get(list_key)
        if nested:
            if not isinstance(current, dict) or not isinstance(current.get("elements"), list):
                raw[list_key] = current = {"elements": []}
            current["elements"].append(element)
        else:
            if not isinstance(current, list):
                raw[list_key] = current = []
            current.append(element)

    return mutate


CLOVER_MUTATIONS: list[tuple[str, Callable[[Raw], None]]] = [
    ("id", _delete("id")),
    ("id", _set("id", value=123.0)),
    ("id", _set("id", value="")),
    ("id", _set("id", value=["A"])),
    ("currency", _delete("currency")),
    ("currency", _set("currency", value="US")),
    ("currency", _set("currency", value="U$D")),
    ("currency", _set("currency", value=840)),
    ("createdTime", _delete("createdTime", "clientCreatedTime")),
    ("createdTime", _set("createdTime", value="2026-01-01T00:00:00Z")),
    ("createdTime", _set("createdTime", value=1.7e12)),
    ("createdTime", _set("createdTime", value=-1)),
    ("modifiedTime", _set("modifiedTime", value=True)),
    ("modifiedTime", _delete("modifiedTime")),
    ("total", _set("total", value=10.5)),
    ("total", _set("total", value=CANARY)),
    ("total", _set("total", value=10**18)),
    ("state", _set("state", value=5)),
    ("lineItems", _set("lineItems", value=CANARY)),
    ("lineItems.elements", _set("lineItems", value={"elements": {"id": "x"}})),
    ("lineItems[", _append("lineItems", [CANARY])),
    ("].id", _append("lineItems", {"price": 100})),
    ("].price", _append("lineItems", {"id": "L", "price": 9.99})),
    ("].price", _append("lineItems", {"id": "L", "price": CANARY})),
    ("].unitQty", _append("lineItems", {"id": "L", "price": 1, "unitQty": "1000"})),
    (
        "].discounts[0].percentage",
        _append("lineItems", {"id": "L", "discounts": {"elements": [{"percentage": 150}]}}),
    ),
    (
        "].modifications[0].amount",
        _append("lineItems", {"id": "L", "modifications": {"elements": [{"amount": "1"}]}}),
    ),
    (
        "].taxRates[0].rate",
        _append("lineItems", {"id": "L", "taxRates": {"elements": [{"id": "T", "rate": "8%"}]}}),
    ),
    ("].refunded", _append("lineItems", {"id": "L", "refunded": "yes"})),
    ("].amount", _append("payments", {"id": "P"})),
    ("].tipAmount", _append("payments", {"id": "P", "amount": 1, "tipAmount": 0.5})),
    ("].createdTime", _append("payments", {"id": "P", "amount": 1, "createdTime": CANARY})),
    ("].cardTransaction", _append("payments", {"id": "P", "amount": 1, "cardTransaction": CANARY})),
    ("].result", _append("payments", {"id": "P", "amount": 1, "result": 1})),
    ("refunds[", _append("refunds", {"id": "R", "amount": None})),
    ("refunds[", _append("refunds", {"id": "R", "amount": 5, "payment": CANARY})),
    ("discounts[", _append("discounts", {"percentage": -1})),
    ("employee", _set("employee", value=CANARY)),
    ("device.id", _set("device", value={"id": 1.5})),
]

POYNT_MUTATIONS: list[tuple[str, Callable[[Raw], None]]] = [
    ("id", _delete("id")),
    ("id", _set("id", value=5.5)),
    ("amounts", _delete("amounts")),
    ("amounts", _set("amounts", value=[1, 2])),
    ("amounts.netTotal", _set("amounts", "netTotal", value=10.25)),
    ("amounts.netTotal", _set("amounts", "netTotal", value=None)),
    ("amounts.netTotal", lambda raw: raw["amounts"].update(subTotal=1, taxTotal=1, netTotal=99)),
    ("amounts.subTotal", _set("amounts", "subTotal", value=CANARY)),
    ("amounts.currency", _set("amounts", "currency", value="dollars")),
    ("createdAt", _set("createdAt", value="2026-13-01T00:00:00Z")),
    ("createdAt", _set("createdAt", value=CANARY)),
    ("createdAt", _set("createdAt", value=1_700_000_000)),
    ("updatedAt", _delete("updatedAt")),
    ("context.businessId", _set("context", "businessId", value="00000000-0000-4000-8000-000000000000")),
    ("context", _set("context", value=CANARY)),
    ("statuses.status", _set("statuses", "status", value=3)),
    ("items", _set("items", value=CANARY)),
    ("].unitPrice", _append("items", {"id": 9, "unitPrice": "5.00"}, nested=False)),
    ("].quantity", _append("items", {"id": 9, "unitPrice": 5, "quantity": "2"}, nested=False)),
    ("].quantity", _append("items", {"id": 9, "unitPrice": 5, "quantity": float("nan")}, nested=False)),
    ("].id", _append("items", {"id": 1.5, "unitPrice": 5}, nested=False)),  # absent is allowed (derived)
    ("].taxes[0].rate", _append("items", {"id": 9, "taxes": [{"rate": -5, "amount": 0}]}, nested=False)),
    ("transactions", _set("transactions", value=CANARY)),
    ("].id", _append("transactions", {"action": "SALE", "amounts": {"transactionAmount": 1}}, nested=False)),
    (
        "].amounts.orderAmount",
        _append("transactions", {"id": "t", "action": "SALE", "amounts": {"orderAmount": 1.5}}, nested=False),
    ),
    ("].amounts.transactionAmount", _append("transactions", {"id": "t", "action": "SALE"}, nested=False)),
    (
        "].createdAt",
        _append("transactions", {"id": "t", "amounts": {"orderAmount": 1}, "createdAt": "x"}, nested=False),
    ),
]


def _assert_malformed(provider: str, merchant: str, raw: Raw, field: str) -> None:
    with pytest.raises(MalformedOrder) as caught:
        normalize(provider, merchant, raw)
    reason = caught.value.reason
    assert field in reason, reason
    assert CANARY not in reason and len(reason) < 120


@BOUNDED
@given(clover_orders(), st.sampled_from(CLOVER_MUTATIONS))
def test_malformed_clover_orders_raise_malformed_order_naming_the_field(
    case: tuple[Raw, CloverExpected], mutation: Mutation
) -> None:
    # Given a valid Clover order with one malformed field
    raw = copy.deepcopy(case[0])
    field, mutate = mutation
    mutate(raw)
    # When it is normalized, then MalformedOrder names the field, not its value
    _assert_malformed("clover", CLOVER_MERCHANT, raw, field)


@BOUNDED
@given(poynt_orders(), st.sampled_from(POYNT_MUTATIONS))
def test_malformed_poynt_orders_raise_malformed_order_naming_the_field(
    case: tuple[Raw, PoyntExpected], mutation: Mutation
) -> None:
    raw = copy.deepcopy(case[0])
    field, mutate = mutation
    mutate(raw)
    _assert_malformed("poynt", BUSINESS_ID, raw, field)


# ---------------------------------------------------------------- arbitrary damage

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["id", "amount", "elements", "href"]), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.append((*prefix, i))
            found.extend(_paths(value, (*prefix, i)))
    return found


def _damage(raw: Raw, data: st.DataObject) -> Raw:
    raw = copy.deepcopy(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(raw)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        node: Any = raw
        for key in path[:-1]:
            node = node[key]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(JUNK)
    return raw


@BOUNDED
@given(
    st.one_of(clover_orders().map(lambda c: ("clover", c[0])), poynt_orders().map(lambda c: ("poynt", c[0]))),
    st.data(),
)
def test_any_damage_gives_a_valid_order_or_malformed_order_never_a_crash(
    case: tuple[str, Raw], data: st.DataObject
) -> None:
    # Given a valid order of either provider with up to three fields replaced by junk or removed
    provider, raw = case
    damaged = _damage(raw, data)
    merchant = CLOVER_MERCHANT if provider == "clover" else BUSINESS_ID
    # When it is normalized
    try:
        order = normalize(provider, merchant, damaged)
    except MalformedOrder as exc:
        # Then either it is refused with a short reason naming a field
        assert ":" in exc.reason and len(exc.reason) < 120
        return
    # Or the result is still a canonical order that satisfies the schema and adds up
    assert not schema_errors(order), schema_errors(order)
    validate(order)
    _assert_adds_up(order)


# ---------------------------------------------------------------- the time reader


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_epoch_ms_matches_datetime_over_the_whole_rfc3339_range(ms: int) -> None:
    expected = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
    assert epoch_ms(ms, "t") == expected
    assert epoch_ms(ms, "t") == expected  # the second read comes from the per-day cache


def test_epoch_ms_day_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fields, "_DAYS", {})
    day_ms = 86_400_000
    for day in range(fields._DAY_CACHE * 2 + 3):
        epoch_ms(day * day_ms + 1, "t")
        assert len(fields._DAYS) <= fields._DAY_CACHE
    assert epoch_ms(1_764_000_000_123, "t") == "2025-11-24T16:00:00.123Z"
