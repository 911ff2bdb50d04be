"""Poynt orders -> canonical order v1: hand-written realistic orders (authorization chains,
voids, refunds, cash, odd time shapes), every result checked against the JSON Schema.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from posync.canonical import normalize
from posync.errors import MalformedOrder
from tests.unit.canonical_support import assert_schema_valid

BIZ = "3f1c2a9e-8b7d-4c6e-9a10-2b3c4d5e6f70"
ORDER_ID = "9d1c0b9e-1111-4c6e-9a10-2b3c4d5e6f70"
AUTH_ID = "0a6e7b9c-0001-4d1e-8f00-000000000001"
CAPTURE_ID = "0a6e7b9c-0002-4d1e-8f00-000000000002"
REFUND_ID = "0a6e7b9c-0003-4d1e-8f00-000000000003"
VISA = {
    "type": "CREDIT_DEBIT",
    "card": {
        "type": "VISA",
        "numberLast4": "4242",
        "numberFirst6": "424242",
        "cardHolderFullName": "DOE/JANE",
    },
}


def poynt(raw: dict[str, Any]) -> dict[str, Any]:
    order = normalize("poynt", BIZ, raw)
    assert_schema_valid(order)
    return order


def tx(
    tx_id: str, action: str, status: str, order_amount: int, tip: int = 0, **fields: Any
) -> dict[str, Any]:
    return {
        "id": tx_id,
        "action": action,
        "status": status,
        "amounts": {
            "transactionAmount": order_amount + tip,
            "orderAmount": order_amount,
            "tipAmount": tip,
            "cashbackAmount": 0,
            "currency": "USD",
        },
        "fundingSource": VISA,
        "createdAt": "2026-11-20T10:01:00Z",
        "updatedAt": "2026-11-20T10:01:00Z",
        **fields,
    }


def widget_order(**fields: Any) -> dict[str, Any]:
    """Two widgets at 5.00 with 1.00 off (9.00), 8.889 % tax 0.80, a 0.50 fee: netTotal 10.30.

    Paid by an authorization (10.30 + 2.00 tip) captured separately, then 3.00 refunded
    against the capture.
    """
    raw: dict[str, Any] = {
        "id": ORDER_ID,
        "createdAt": "2026-11-20T10:00:00Z",
        "updatedAt": "2026-11-20T10:05:00.250Z",
        "orderNumber": "42",
        "notes": "Deliver to Jane Doe, 1 Main St",
        "customerUserId": 77881,
        "context": {
            "businessId": BIZ,
            "storeId": "c394627f-4f68-47fb-90a5-684ea801a352",
            "storeDeviceId": "urn:tid:48c54303-6d51-39af-bdeb-4af53f621652",
            "source": "INSTORE",
            "employeeId": 5247,
        },
        "statuses": {
            "status": "COMPLETED",
            "fulfillmentStatus": "FULFILLED",
            "transactionStatusSummary": "PARTIALLY_REFUNDED",
        },
        "amounts": {
            "subTotal": 1000,
            "discountTotal": -100,
            "feeTotal": 50,
            "taxTotal": 80,
            "netTotal": 1030,
            "currency": "USD",
        },
        "items": [
            {
                "id": 1,
                "name": "Widget",
                "sku": "W-1",
                "productId": "8d8d0b35-0e51-4c1c-9d84-6a0e7c3a8f11",
                "quantity": 2.0,
                "unitPrice": 500,
                "unitOfMeasure": "EACH",
                "status": "FULFILLED",
                "discount": 100,
                "fee": 50,
                "tax": 80,
                "taxes": [{"id": "b5d3", "type": "SALES", "rate": 8.889, "amount": 80}],
                "discounts": [{"amount": -100, "customName": "Promo"}],
                "createdAt": "2026-11-20T10:00:00Z",
                "updatedAt": "2026-11-20T10:00:00Z",
            }
        ],
        "discounts": [],
        "transactions": [
            tx(AUTH_ID, "AUTHORIZE", "CAPTURED", 1030, tip=200),
            tx(
                CAPTURE_ID,
                "CAPTURE",
                "CAPTURED",
                1030,
                tip=200,
                parentId=AUTH_ID,
                createdAt="2026-11-20T10:02:00Z",
            ),
            tx(REFUND_ID, "REFUND", "REFUNDED", 300, parentId=CAPTURE_ID, createdAt="2026-11-20T10:04:00Z"),
        ],
    }
    raw.update(fields)
    return copy.deepcopy(raw)


def test_an_authorized_captured_and_refunded_order_normalizes_exactly() -> None:
    order = poynt(widget_order())
    assert order == {
        "schema_version": 1,
        "provider": "poynt",
        "merchant_id": BIZ,
        "order_id": ORDER_ID,
        "state": "partially_refunded",
        "provider_state": "COMPLETED",
        "currency": "USD",
        "created_at": "2026-11-20T10:00:00.000Z",
        "modified_at": "2026-11-20T10:05:00.250Z",
        "totals": {
            "subtotal": 1000,
            "discount": -100,
            "tax": 80,
            "tip": 200,
            "service_charge": 50,
            "total": 1030,
            "paid": 1030,
            "refunded": 300,
        },
        "line_items": [
            {
                "line_id": "1",
                "name": "Widget",
                "sku": "W-1",
                "quantity": 2.0,
                "unit_price": 500,
                "discount": -100,
                "tax": 80,
                "total": 900,
                "refunded": False,
            }
        ],
        "payments": [
            {
                "payment_id": AUTH_ID,
                "amount": 1030,
                "tip": 200,
                "tax": 0,
                "tender": "card",
                "card_brand": "VISA",
                "status": "succeeded",
                "created_at": "2026-11-20T10:01:00.000Z",
            }
        ],
        "refunds": [
            {
                "refund_id": REFUND_ID,
                "payment_id": AUTH_ID,
                "amount": 300,
                "tax": 0,
                "tip": 0,
                "created_at": "2026-11-20T10:04:00.000Z",
            }
        ],
        "discounts": [{"name": "Promo", "amount": -100}],
        "taxes": [{"name": "SALES", "rate": 8.889, "amount": 80}],
        "source": {
            "store_id": "c394627f-4f68-47fb-90a5-684ea801a352",
            "device_id": "urn:tid:48c54303-6d51-39af-bdeb-4af53f621652",
            "employee_id": "5247",
        },
    }


def test_no_personal_data_or_card_digits_leave_the_normalizer() -> None:
    text = json.dumps(poynt(widget_order()))
    for secret in ("Jane", "JANE", "Main St", "4242", "424242", "77881"):
        assert secret not in text


def test_a_capture_listed_before_its_authorization_is_still_counted_once() -> None:
    # Given the same order with its transactions in reverse order
    raw = widget_order()
    raw["transactions"].reverse()
    order = poynt(raw)
    assert len(order["payments"]) == 1
    assert order["totals"]["paid"] == 1030
    assert order["refunds"][0]["payment_id"] == AUTH_ID


def test_a_partial_capture_counts_the_captured_amount() -> None:
    # Given an authorization of 12.00 captured for 10.30
    raw = widget_order(statuses={"status": "COMPLETED"})
    raw["transactions"] = [
        tx(AUTH_ID, "AUTHORIZE", "CAPTURED", 1200),
        tx(CAPTURE_ID, "CAPTURE", "CAPTURED", 1030, parentId=AUTH_ID),
    ]
    order = poynt(raw)
    assert [(p["payment_id"], p["amount"], p["status"]) for p in order["payments"]] == [
        (AUTH_ID, 1030, "succeeded")
    ]
    assert order["state"] == "completed"


def test_an_authorization_not_yet_captured_is_not_paid() -> None:
    raw = widget_order(statuses={"status": "OPENED"})
    raw["transactions"] = [tx(AUTH_ID, "AUTHORIZE", "AUTHORIZED", 1030)]
    order = poynt(raw)
    assert order["payments"][0]["status"] == "authorized"
    assert order["totals"]["paid"] == 0
    assert order["state"] == "open"


def test_a_voided_sale_then_a_cash_sale() -> None:
    # Given a card sale voided at the terminal, then the order paid in cash; a voided refund too
    raw = widget_order(statuses={"status": "OPENED"})
    cash = tx("cash-sale", "SALE", "CAPTURED", 1030, fundingSource={"type": "CASH"})
    raw["transactions"] = [
        tx("card-sale", "SALE", "VOIDED", 1030),
        cash,
        tx("void-refund", "REFUND", "VOIDED", 1030, parentId="cash-sale"),
    ]
    order = poynt(raw)
    # Then the void stays visible but counts nowhere, and the cash sale pays the order
    assert [(p["payment_id"], p["status"], p["tender"], p["card_brand"]) for p in order["payments"]] == [
        ("card-sale", "voided", "card", "VISA"),
        ("cash-sale", "succeeded", "cash", None),
    ]
    assert order["refunds"] == []
    assert (order["totals"]["paid"], order["totals"]["refunded"]) == (1030, 0)
    assert order["state"] == "paid"


def test_a_fully_refunded_sale() -> None:
    raw = widget_order()
    raw["transactions"] = [
        tx("sale", "SALE", "REFUNDED", 1030, tip=100),
        tx("refund", "REFUND", "REFUNDED", 1030, tip=100, parentId="sale"),
    ]
    order = poynt(raw)
    assert order["payments"][0]["status"] == "refunded"
    assert order["totals"]["paid"] == order["totals"]["refunded"] == 1030
    assert order["refunds"][0]["tip"] == 100
    assert order["state"] == "refunded"


def test_declined_and_unknown_funding() -> None:
    raw = widget_order(statuses={"status": "OPENED"})
    raw["transactions"] = [
        tx("declined", "SALE", "DECLINED", 1030),
        tx("gift", "SALE", "CAPTURED", 1030, fundingSource={"type": "CUSTOM_FUNDING_SOURCE"}),
    ]
    payments = poynt(raw)["payments"]
    assert [(p["status"], p["tender"]) for p in payments] == [("failed", "card"), ("succeeded", "other")]


def test_transaction_amount_without_order_amount_excludes_tip_and_cashback() -> None:
    # Given a debit sale of 10.30 with 2.00 tip and 20.00 cashback, reported only as transactionAmount
    raw = widget_order(statuses={"status": "COMPLETED"})
    raw["transactions"] = [
        {
            "id": "sale",
            "action": "SALE",
            "status": "CAPTURED",
            "amounts": {
                "transactionAmount": 3230,
                "tipAmount": 200,
                "cashbackAmount": 2000,
                "currency": "USD",
            },
            "fundingSource": VISA,
        }
    ]
    payment = poynt(raw)["payments"][0]
    assert (payment["amount"], payment["tip"], payment["created_at"]) == (1030, 200, None)


def test_a_cancelled_order() -> None:
    raw = widget_order(statuses={"status": "CANCELLED"}, transactions=[])
    assert poynt(raw)["state"] == "cancelled"


def test_a_refund_of_a_transaction_not_in_the_order_keeps_its_parent_id() -> None:
    raw = widget_order()
    raw["transactions"] = [tx("refund", "REFUND", "REFUNDED", 300, parentId="elsewhere")]
    order = poynt(raw)
    assert order["refunds"][0]["payment_id"] == "elsewhere"
    assert order["state"] == "partially_refunded"  # nothing paid here: measured against the total


def test_missing_tax_or_subtotal_is_the_remainder() -> None:
    raw = widget_order()
    del raw["amounts"]["taxTotal"]
    assert poynt(raw)["totals"]["tax"] == 80
    raw = widget_order()
    del raw["amounts"]["subTotal"]
    assert poynt(raw)["totals"]["subtotal"] == 1000


def test_an_order_with_no_items_and_no_transactions() -> None:
    raw = widget_order(
        items=[],
        transactions=[],
        statuses={"status": "OPENED"},
        amounts={"subTotal": 0, "discountTotal": 0, "taxTotal": 0, "netTotal": 0, "currency": "CAD"},
    )
    order = poynt(raw)
    assert (order["line_items"], order["payments"], order["state"], order["currency"]) == (
        [],
        [],
        "open",
        "CAD",
    )


def test_currency_falls_back_to_the_transactions() -> None:
    raw = widget_order()
    del raw["amounts"]["currency"]
    assert poynt(raw)["currency"] == "USD"


def test_returned_items_and_fractional_quantities() -> None:
    # Given 0.75 lb at 8.99/lb = 6.7425 -> 6.74, returned
    raw = widget_order()
    raw["items"].append(
        {"id": 2, "name": "Cheese (lb)", "quantity": 0.75, "unitPrice": 899, "status": "RETURNED"}
    )
    line = poynt(raw)["line_items"][1]
    assert (line["line_id"], line["quantity"], line["total"], line["refunded"], line["sku"]) == (
        "2",
        0.75,
        674,
        True,
        None,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T10:05:00Z", "2026-11-20T10:05:00.000Z"),
        ("2026-11-20T10:05:00.1Z", "2026-11-20T10:05:00.100Z"),
        ("2026-11-20T10:05:00.123456Z", "2026-11-20T10:05:00.123Z"),
        ("2026-11-20T10:05:00.999+00:00", "2026-11-20T10:05:00.999Z"),
        ("2026-11-20T12:05:00+02:00", "2026-11-20T10:05:00.000Z"),
        ("2026-11-20T00:30:00-05:00", "2026-11-20T05:30:00.000Z"),
        ("2026-11-20T10:05:00", "2026-11-20T10:05:00.000Z"),
    ],
)
def test_times_become_rfc3339_utc_with_milliseconds(value: str, expected: str) -> None:
    assert poynt(widget_order(updatedAt=value))["modified_at"] == expected


def test_the_business_id_must_be_this_merchant() -> None:
    # An upper-cased id is the same business; another business's order is refused
    assert poynt(widget_order(context={"businessId": BIZ.upper()}))["merchant_id"] == BIZ
    with pytest.raises(MalformedOrder, match=r"^context\.businessId: is another business$"):
        normalize("poynt", BIZ, widget_order(context={"businessId": "00000000-0000-4000-8000-000000000000"}))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("id"), "id: missing"),
        (lambda r: r.pop("amounts"), "amounts: missing"),
        (
            lambda r: r["amounts"].update(netTotal=1031),
            "amounts.netTotal: is not subTotal + discountTotal + taxTotal + feeTotal",
        ),
        (
            lambda r: r["amounts"].update(netTotal=10.30),
            "amounts.netTotal: not an integer amount of minor units",
        ),
        (lambda r: r["amounts"].update(currency="usd$"), "amounts.currency: not an ISO 4217 currency code"),
        (lambda r: r.update(createdAt="20/11/2026"), "createdAt: not an ISO 8601 time"),
        (lambda r: r.update(updatedAt=1763900000000), "updatedAt: not an ISO 8601 time"),
        (
            lambda r: r["items"][0].update(unitPrice="5.00"),
            "items[0].unitPrice: not an integer amount of minor units",
        ),
        (lambda r: r["items"][0].update(quantity="2"), "items[0].quantity: not a number"),
        (
            lambda r: r["items"][0]["taxes"][0].update(amount=0.8),
            "items[0].taxes[0].amount: not an integer amount of minor units",
        ),
        (
            lambda r: r["transactions"][1]["amounts"].update(orderAmount="10.30"),
            "transactions[1].amounts.orderAmount: not an integer amount of minor units",
        ),
        (lambda r: r["transactions"][2].pop("id"), "transactions[2].id: missing"),
        (
            lambda r: r["transactions"][0].update(createdAt="soon"),
            "transactions[0].createdAt: not an ISO 8601 time",
        ),
        (lambda r: r["statuses"].update(status=["COMPLETED"]), "statuses.status: not a string"),
    ],
)
def test_malformed_orders_name_the_field(mutate: Any, reason: str) -> None:
    raw = widget_order()
    mutate(raw)
    with pytest.raises(MalformedOrder) as caught:
        normalize("poynt", BIZ, raw)
    assert caught.value.reason == reason


def test_an_item_without_id_gets_a_stable_derived_line_id_not_a_quarantine() -> None:
    # Given a Poynt order whose items carry no id (Poynt's model allows it)
    from posync.canonical import normalize, validate

    raw = {
        "id": "6a3b8f0e-0000-4000-8000-000000000001",
        "createdAt": "2026-11-01T10:00:00Z",
        "updatedAt": "2026-11-01T10:05:00Z",
        "amounts": {
            "subTotal": 700,
            "discountTotal": 0,
            "taxTotal": 0,
            "feeTotal": 0,
            "netTotal": 700,
            "currency": "USD",
        },
        "items": [
            {"name": "Latte", "sku": "L1", "quantity": 1, "unitPrice": 500},
            {"name": "Cookie", "productId": "p-2", "quantity": 2, "unitPrice": 100},
        ],
    }
    # When normalized twice (a later version with the same items)
    a = normalize("poynt", "0b9f1c2e-1111-4222-8333-444455556666", raw)
    b = normalize(
        "poynt", "0b9f1c2e-1111-4222-8333-444455556666", {**raw, "updatedAt": "2026-11-02T00:00:00Z"}
    )
    validate(a)
    # Then each line has a derived id: distinct, stable, never an integer
    ids = [ln["line_id"] for ln in a["line_items"]]
    assert ids == [ln["line_id"] for ln in b["line_items"]]
    assert len(set(ids)) == 2 and all(i.startswith("~") for i in ids)
    assert ids[0].startswith("~1-") and ids[1].startswith("~2-")


def test_tips_come_from_captured_totals_when_no_transactions_are_sent() -> None:
    from posync.canonical import normalize

    raw = {
        "id": "6a3b8f0e-0000-4000-8000-000000000002",
        "createdAt": "2026-11-01T10:00:00Z",
        "updatedAt": "2026-11-01T10:05:00Z",
        "amounts": {
            "subTotal": 1000,
            "discountTotal": 0,
            "taxTotal": 80,
            "feeTotal": 0,
            "netTotal": 1080,
            "currency": "USD",
            "capturedTotals": {
                "transactionAmount": 1280,
                "orderAmount": 1080,
                "tipAmount": 200,
                "currency": "USD",
            },
            "refundedTotals": {
                "transactionAmount": 300,
                "orderAmount": 300,
                "tipAmount": 0,
                "currency": "USD",
            },
        },
        "statuses": {"status": "COMPLETED"},
    }
    order = normalize("poynt", "0b9f1c2e-1111-4222-8333-444455556666", raw)
    assert order["totals"]["tip"] == 200
    assert order["totals"]["paid"] == 1080
    assert order["totals"]["refunded"] == 300
    assert order["state"] == "partially_refunded"
