"""Clover v3 orders -> canonical order v1: hand-written realistic orders, expectations
worked out by hand in the comments, every result checked against the JSON Schema.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from posync.canonical import normalize
from posync.errors import MalformedOrder, UnknownProvider
from posync.providers.clover.normalizer import missing
from tests.unit.canonical_support import assert_schema_valid

MERCHANT = "MERCHANT12345"
T0 = 1_763_917_418_123  # 2025-11-23T17:03:38.123Z
NY_TAX = {"id": "TAXNY00000001", "name": "NY Sales Tax", "rate": 887_500}  # 8.875 %


def clover(raw: dict[str, Any]) -> dict[str, Any]:
    order = normalize("clover", MERCHANT, raw)
    assert_schema_valid(order)
    return order


def base_order(**fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "ORDER00000001",
        "href": "https://apisandbox.dev.clover.com/v3/merchants/MERCHANT12345/orders/ORDER00000001",
        "currency": "USD",
        "state": "locked",
        "createdTime": T0,
        "clientCreatedTime": T0 - 5,
        "modifiedTime": T0 + 60_000,
        "taxRemoved": False,
        "isVat": False,
        "manualTransaction": False,
        "testMode": False,
        "employee": {"id": "EMPLOYEE00001"},
        "device": {"id": "DEVICE0000001"},
    }
    raw.update(fields)
    return raw


def cafe_order() -> dict[str, Any]:
    """Three lines, a modification, a weighed item, a line % discount, an order discount, a refund.

    Latte: 450 + oat 75 = 525 (taxed). Beans: 1999 x 1.5 = 2998.5 -> 2999, 10 % off -> -300, net 2699
    (taxed). Gift card: 2500 (no tax). Subtotal 6024; line discounts -300; base 5724; loyalty -200.
    Loyalty scales the taxable amounts by (5724 - 200) / 5724: tax once per rate is
    (525 + 2699) x 5524/5724 x 8.875 % = 276.13 -> 276 (lines: 525 -> 44.97 -> 45, 2699 -> 231.17 -> 231).
    Total 6024 - 500 + 276 = 5800.
    """
    return copy.deepcopy(
        base_order(
            total=5800,
            paymentState="PARTIALLY_REFUNDED",
            title="Table 4",
            note="Call Jane Doe at 555-0100",
            lineItems={
                "elements": [
                    {
                        "id": "LINE000000001",
                        "name": "Latte",
                        "price": 450,
                        "itemCode": "LATTE-12",
                        "isRevenue": True,
                        "refunded": False,
                        "exchanged": False,
                        "createdTime": T0,
                        "modifications": {
                            "elements": [{"id": "MOD0000000001", "name": "Oat milk", "amount": 75}]
                        },
                        "taxRates": {"elements": [NY_TAX]},
                    },
                    {
                        "id": "LINE000000002",
                        "name": "Coffee beans (lb)",
                        "price": 1999,
                        "unitQty": 1500,
                        "isRevenue": True,
                        "refunded": True,
                        "createdTime": T0,
                        "discounts": {
                            "elements": [{"id": "DISC000000001", "name": "10% off beans", "percentage": 10}]
                        },
                        "taxRates": {"elements": [NY_TAX]},
                    },
                    {
                        "id": "LINE000000003",
                        "name": "Gift card",
                        "price": 2500,
                        "isRevenue": False,
                        "createdTime": T0,
                        "taxRates": {"elements": []},
                    },
                ]
            },
            discounts={"elements": [{"id": "DISC000000002", "name": "Loyalty", "amount": -200}]},
            payments={
                "elements": [
                    {
                        "id": "PAYMENT000001",
                        "amount": 5800,
                        "tipAmount": 500,
                        "taxAmount": 276,
                        "cashbackAmount": 0,
                        "result": "SUCCESS",
                        "createdTime": T0 + 30_000,
                        "modifiedTime": T0 + 30_000,
                        "tender": {
                            "id": "TENDER0000001",
                            "label": "Credit Card",
                            "labelKey": "com.clover.tender.credit_card",
                        },
                        "cardTransaction": {
                            "cardType": "VISA",
                            "last4": "4242",
                            "first6": "424242",
                            "cardholderName": "JANE DOE",
                        },
                    }
                ]
            },
            refunds={
                "elements": [
                    {
                        "id": "REFUND0000001",
                        "amount": 3254,
                        "taxAmount": 231,
                        "tipAmount": 0,
                        "createdTime": T0 + 50_000,
                        "payment": {"id": "PAYMENT000001"},
                    }
                ]
            },
        )
    )


def test_a_paid_cafe_order_normalizes_exactly() -> None:
    # Given a paid, partially refunded cafe order (arithmetic in cafe_order's docstring)
    raw = cafe_order()
    # When it is normalized
    order = clover(raw)
    # Then every field is as worked out by hand
    assert order == {
        "schema_version": 1,
        "schema_minor": 1,
        "provider": "clover",
        "merchant_id": MERCHANT,
        "order_id": "ORDER00000001",
        "state": "partially_refunded",
        "provider_state": "locked",
        "currency": "USD",
        "created_at": "2025-11-23T17:03:38.123Z",
        "modified_at": "2025-11-23T17:04:38.123Z",
        "totals": {
            "subtotal": 6024,
            "discount": -500,
            "tax": 276,
            "tip": 500,
            "service_charge": 0,
            "total": 5800,
            "paid": 5800,
            "refunded": 3254,
        },
        "line_items": [
            {
                "line_id": "LINE000000001",
                "name": "Latte",
                "sku": "LATTE-12",
                "quantity": 1.0,
                "unit_price": 450,
                "discount": 0,
                "tax": 45,
                "total": 525,
                "refunded": False,
            },
            {
                "line_id": "LINE000000002",
                "name": "Coffee beans (lb)",
                "sku": None,
                "quantity": 1.5,
                "unit_price": 1999,
                "discount": -300,
                "tax": 231,
                "total": 2699,
                "refunded": True,
            },
            {
                "line_id": "LINE000000003",
                "name": "Gift card",
                "sku": None,
                "quantity": 1.0,
                "unit_price": 2500,
                "discount": 0,
                "tax": 0,
                "total": 2500,
                "refunded": False,
            },
        ],
        "payments": [
            {
                "payment_id": "PAYMENT000001",
                "amount": 5800,
                "tip": 500,
                "tax": 276,
                "tender": "card",
                "card_brand": "VISA",
                "status": "succeeded",
                "created_at": "2025-11-23T17:04:08.123Z",
            }
        ],
        "refunds": [
            {
                "refund_id": "REFUND0000001",
                "payment_id": "PAYMENT000001",
                "amount": 3254,
                "tax": 231,
                "tip": 0,
                "created_at": "2025-11-23T17:04:28.123Z",
            }
        ],
        "discounts": [{"name": "10% off beans", "amount": -300}, {"name": "Loyalty", "amount": -200}],
        "taxes": [{"name": "NY Sales Tax", "rate": 8.875, "amount": 276}],
        "source": {"store_id": None, "device_id": "DEVICE0000001", "employee_id": "EMPLOYEE00001"},
        "discrepancies": [],
    }


def test_no_personal_data_or_card_digits_leave_the_normalizer() -> None:
    # Given an order with a title, a note with a phone number, a card's digits and holder name
    order = clover(cafe_order())
    # Then none of them is in the canonical order
    text = json.dumps(order)
    for secret in ("Table 4", "555-0100", "Jane", "JANE", "4242", "424242"):
        assert secret not in text


def test_the_raw_order_is_left_untouched() -> None:
    raw = cafe_order()
    before = copy.deepcopy(raw)
    clover(raw)
    assert raw == before


def test_vat_orders_report_the_included_tax_and_a_net_subtotal() -> None:
    # Given a EUR order with VAT-inclusive prices: 11.90 incl. 19 % VAT (190 = 1190 x 19/119)
    vat = {"id": "VAT0000000019", "name": "MwSt 19%", "rate": 1_900_000}
    raw = base_order(
        currency="EUR",
        isVat=True,
        total=1190,
        lineItems={
            "elements": [{"id": "L1", "name": "Brezel", "price": 1190, "taxRates": {"elements": [vat]}}]
        },
    )
    # When normalized
    totals = clover(raw)["totals"]
    # Then the VAT is the tax, the subtotal excludes it, and the total is untouched
    assert (totals["subtotal"], totals["tax"], totals["total"]) == (1000, 190, 1190)


def test_jpy_amounts_are_yen_with_no_scaling() -> None:
    # Given a JPY order: two 500-yen items at 10 % consumption tax
    rate = {"id": "JPTAX00000010", "name": "Consumption tax", "rate": 1_000_000}
    raw = base_order(
        currency="JPY",
        total=1100,
        lineItems={
            "elements": [
                {"id": "L1", "name": "Onigiri", "price": 500, "taxRates": {"elements": [rate]}},
                {"id": "L2", "name": "Tea", "price": 500, "taxRates": {"elements": [rate]}},
            ]
        },
    )
    order = clover(raw)
    # Then amounts are yen as given, and the tax rate is a percent
    assert order["currency"] == "JPY"
    assert (order["totals"]["subtotal"], order["totals"]["tax"], order["totals"]["total"]) == (
        1000,
        100,
        1100,
    )
    assert order["taxes"] == [{"name": "Consumption tax", "rate": 10.0, "amount": 100}]


def test_a_hidden_order_has_no_state() -> None:
    # Given an order Clover returns without a state (state null: hidden), without line items
    raw = base_order(total=0)
    del raw["state"]
    order = clover(raw)
    assert (order["state"], order["provider_state"]) == ("hidden", None)
    raw["state"] = None
    assert clover(raw)["state"] == "hidden"


@pytest.mark.parametrize("name", ["lineItems", "payments", "refunds", "discounts", "credits"])
def test_an_unexpanded_list_is_malformed_never_an_empty_list(name: str) -> None:
    # Given an order whose one list came unexpanded ({"href"} only), the others expanded
    raw = base_order(total=1234, manualTransaction=True)
    raw[name] = {"href": f"https://x/{name}"}
    # When it is normalized, then it is refused, naming the list (it is quarantined, not exported)
    with pytest.raises(MalformedOrder, match=rf"^{name}: not expanded"):
        clover(raw)


@pytest.mark.parametrize(
    ("payment_state", "absent", "gap"),
    [
        ("PAID", "payments", "payments"),
        ("PARTIALLY_REFUNDED", "payments", "payments"),
        ("REFUNDED", "refunds", "refunds"),
        ("PAID", "lineItems", "lineItems"),
    ],
)
def test_a_collection_the_order_says_exists_but_that_is_absent_is_malformed(
    payment_state: str, absent: str, gap: str
) -> None:
    # Given a paid order with a total whose one collection is missing from the reply
    raw = base_order(
        total=1000,
        paymentState=payment_state,
        lineItems={"elements": [{"id": "L1", "price": 1000}]},
        payments={"elements": [{"id": "P1", "amount": 1000, "result": "SUCCESS"}]},
        refunds={"elements": [{"id": "R1", "amount": 1000, "payment": {"id": "P1"}}]},
    )
    del raw[absent]
    # When it is normalized, then it is refused naming that collection; missing() says so too
    assert gap in missing(raw)
    with pytest.raises(MalformedOrder, match=rf"^{gap}: asked for but missing"):
        clover(raw)


def test_a_tender_reference_or_a_card_payment_without_its_card_is_malformed() -> None:
    # Given a payment whose tender came as a reference only ({id}: payments.tender not expanded)
    card = {"id": "T1", "labelKey": "com.clover.tender.credit_card"}
    raw = base_order(total=0, payments={"elements": [{"id": "P1", "amount": 0, "tender": {"id": "T1"}}]})
    with pytest.raises(MalformedOrder, match=r"^payments\[0\]\.tender: not expanded"):
        clover(raw)
    # and one whose card tender came without its cardTransaction
    raw["payments"]["elements"][0]["tender"] = card
    with pytest.raises(MalformedOrder, match=r"^payments\[0\]\.cardTransaction: missing"):
        clover(raw)
    # Then with the card transaction, the brand is read
    raw["payments"]["elements"][0]["cardTransaction"] = {"cardType": "VISA"}
    assert clover(raw)["payments"][0]["card_brand"] == "VISA"


def test_a_manual_amount_order_without_lines_paid_in_cash() -> None:
    # Given a quick-pay order: no line items, 15.00 paid in cash (no card: no brand)
    raw = base_order(
        total=1500,
        manualTransaction=True,
        paymentState="PAID",
        lineItems={"elements": []},
        payments={
            "elements": [
                {
                    "id": "P1",
                    "amount": 1500,
                    "result": "SUCCESS",
                    "tender": {"id": "T", "label": "Cash", "labelKey": "com.clover.tender.cash"},
                }
            ]
        },
        refunds={"elements": []},
    )
    order = clover(raw)
    assert order["state"] == "paid"
    assert order["totals"]["subtotal"] == order["totals"]["paid"] == 1500
    assert order["totals"]["tax"] == 0
    assert order["payments"][0]["tender"] == "cash"
    assert order["payments"][0]["card_brand"] is None
    assert order["payments"][0]["created_at"] is None


def test_an_open_order_without_a_total_gets_the_computed_total() -> None:
    # Given an open order Clover returned without total: 10.00 at 8.875 % = 0.8875 -> 0.89
    raw = base_order(
        state="open",
        paymentState="OPEN",
        lineItems={
            "elements": [{"id": "L1", "name": "Sandwich", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]
        },
    )
    order = clover(raw)
    assert order["state"] == "open"
    assert (order["totals"]["tax"], order["totals"]["total"]) == (89, 1089)


def test_a_device_rounding_difference_lands_in_tax_so_the_total_is_kept() -> None:
    # Given a total one cent above the documented arithmetic (another rounding on the device)
    raw = base_order(
        total=1090,
        lineItems={"elements": [{"id": "L1", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]},
    )
    totals = clover(raw)["totals"]
    # Then the total is Clover's and the components still add up
    assert totals["total"] == 1090
    assert totals["subtotal"] + totals["discount"] + totals["service_charge"] + totals["tax"] == 1090
    assert totals["tax"] == 90


def test_modifications_are_per_unit_and_unit_qty_is_thousandths() -> None:
    # Given 2.5 units of a 10.00 item with a 2.00 modification and a -0.50 one: (1000+200-50) x 2.5
    raw = base_order(
        total=2875,
        lineItems={
            "elements": [
                {
                    "id": "L1",
                    "name": "Deli meat",
                    "price": 1000,
                    "unitQty": 2500,
                    "modifications": {
                        "elements": [
                            {"id": "M1", "name": "Sliced", "amount": 200},
                            {"id": "M2", "name": "No bag", "amount": -50},
                        ]
                    },
                }
            ]
        },
    )
    line = clover(raw)["line_items"][0]
    assert (line["quantity"], line["unit_price"], line["total"]) == (2.5, 1000, 2875)


def test_fractional_percentage_discounts_and_a_missing_unit_qty() -> None:
    # Given 12.5 % off a 10.00 item (unitQty absent = 1): -125
    raw = base_order(
        total=875,
        lineItems={
            "elements": [
                {
                    "id": "L1",
                    "price": 1000,
                    "discounts": {"elements": [{"name": "Happy hour", "percentage": 12.5}]},
                }
            ]
        },
    )
    order = clover(raw)
    assert order["line_items"][0]["quantity"] == 1.0
    assert order["line_items"][0]["discount"] == -125
    assert order["totals"]["discount"] == -125
    assert order["discounts"] == [{"name": "Happy hour", "amount": -125}]


def test_payment_results_decide_what_counts_as_paid() -> None:
    # Given a failed card try, a voided payment, a pre-auth and the successful payment by check
    def payment(pid: str, result: str, amount: int, tender: dict[str, str] | None = None) -> dict[str, Any]:
        p: dict[str, Any] = {"id": pid, "amount": amount, "tipAmount": 100, "result": result}
        if tender:
            p["tender"] = tender
        return p

    card = {"labelKey": "com.clover.tender.credit_card"}
    check = {"label": "Check", "labelKey": "com.clover.tender.check"}
    raw = base_order(
        total=1000,
        paymentState="PAID",
        manualTransaction=True,
        payments={
            "elements": [
                payment("P1", "FAIL", 1000, card),
                payment("P2", "VOIDED", 1000, card),
                payment("P3", "AUTH", 1000, card),
                payment("P4", "SUCCESS", 1000, check),
            ]
        },
    )
    order = clover(raw)
    assert [(p["status"], p["tender"]) for p in order["payments"]] == [
        ("failed", "card"),
        ("voided", "card"),
        ("authorized", "card"),
        ("succeeded", "other"),
    ]
    # Then only the successful one is paid, with its tip
    assert (order["totals"]["paid"], order["totals"]["tip"]) == (1000, 100)
    assert order["state"] == "paid"


def test_full_refunds_and_credits_make_a_refunded_order() -> None:
    # Given a paid order (no paymentState) refunded in full: a refund plus a manual credit
    raw = base_order(
        total=2000,
        manualTransaction=True,
        payments={"elements": [{"id": "P1", "amount": 2000, "result": "SUCCESS"}]},
        refunds={"elements": [{"id": "R1", "amount": 1500, "payment": {"id": "P1"}}]},
        credits={"elements": [{"id": "C1", "amount": 500, "createdTime": T0}]},
    )
    order = clover(raw)
    assert order["state"] == "refunded"
    assert order["totals"]["refunded"] == 2000
    assert [(r["refund_id"], r["payment_id"]) for r in order["refunds"]] == [("R1", "P1"), ("C1", None)]


@pytest.mark.parametrize(
    ("state", "payment_state", "expected"),
    [
        ("open", None, "open"),
        ("open", "OPEN", "open"),
        ("open", "PARTIALLY_PAID", "open"),
        ("locked", None, "paid"),
        ("paid", None, "paid"),
        ("locked", "PAID", "paid"),
        ("locked", "REFUNDED", "refunded"),
        ("locked", "CREDITED", "refunded"),
        ("locked", "PARTIALLY_REFUNDED", "partially_refunded"),
        ("cancelled", None, "cancelled"),
        (None, "PAID", "hidden"),
    ],
)
def test_state_mapping(state: str | None, payment_state: str | None, expected: str) -> None:
    raw = base_order(state=state, total=0)
    if payment_state:
        raw["paymentState"] = payment_state
    assert clover(raw)["state"] == expected


def test_service_charges_come_from_the_payments() -> None:
    # Given a 10.00 line, 8.875 % tax (0.89) and an 18 % service charge of 1.80 on the payment
    raw = base_order(
        total=1269,
        lineItems={"elements": [{"id": "L1", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]},
        payments={
            "elements": [
                {
                    "id": "P1",
                    "amount": 1269,
                    "result": "SUCCESS",
                    "serviceCharge": {"id": "S", "name": "Gratuity", "amount": 180},
                }
            ]
        },
    )
    totals = clover(raw)["totals"]
    assert (totals["subtotal"], totals["service_charge"], totals["tax"], totals["total"]) == (
        1000,
        180,
        89,
        1269,
    )


def test_a_tax_removed_order_has_no_tax_breakdown() -> None:
    raw = base_order(
        total=1000,
        taxRemoved=True,
        lineItems={"elements": [{"id": "L1", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]},
    )
    order = clover(raw)
    assert order["taxes"] == []
    assert order["totals"]["tax"] == 0
    assert order["line_items"][0]["tax"] == 0


def test_an_order_with_250_lines_merged_from_nested_paging() -> None:
    # Given 250 one-dollar lines (the sync engine pages line_items past Clover's 100-item cut)
    lines = [{"id": f"L{i:012d}", "price": 100, "taxRates": {"elements": [NY_TAX]}} for i in range(250)]
    raw = base_order(total=25_000 + 2219, lineItems={"elements": lines})  # 25000 x 8.875 % = 2218.75
    order = clover(raw)
    assert len(order["line_items"]) == 250
    assert (order["totals"]["subtotal"], order["totals"]["tax"]) == (25_000, 2219)
    assert order["taxes"][0]["amount"] == 2219


def test_currency_codes_are_upper_cased() -> None:
    assert clover(base_order(currency="cad", total=0))["currency"] == "CAD"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("id"), "id: missing"),
        (lambda r: r.update(currency="US"), "currency: not an ISO 4217 currency code"),
        (lambda r: r.update(total="58.00"), "total: not an integer amount of minor units"),
        (lambda r: r.update(modifiedTime="2025-11-23"), "modifiedTime: not a time in epoch milliseconds"),
        (lambda r: r.pop("modifiedTime"), "modifiedTime: missing"),
        (
            lambda r: r["lineItems"]["elements"][1].update(price=19.99),
            "lineItems[1].price: not an integer amount of minor units",
        ),
        (lambda r: r["lineItems"]["elements"][0].pop("id"), "lineItems[0].id: missing"),
        (
            lambda r: r["lineItems"]["elements"][0]["taxRates"]["elements"][0].update(rate=8.875),
            "lineItems[0].taxRates[0].rate: not an integer",
        ),
        (
            lambda r: r["lineItems"]["elements"][1]["discounts"]["elements"][0].update(percentage=110),
            "lineItems[1].discounts[0].percentage: outside 0..100",
        ),
        (lambda r: r["payments"]["elements"][0].pop("amount"), "payments[0].amount: missing"),
        (
            lambda r: r["refunds"]["elements"][0].update(createdTime=-5),
            "refunds[0].createdTime: not a time in epoch milliseconds",
        ),
        (
            lambda r: r["refunds"]["elements"][0].update(payment="PAYMENT000001"),
            "refunds[0].payment: not an object",
        ),
        (lambda r: r.update(lineItems=[1, 2]), "lineItems[0]: not an object"),
        (lambda r: r.update(employee="EMPLOYEE00001"), "employee: not an object"),
    ],
)
def test_malformed_orders_name_the_field(mutate: Any, reason: str) -> None:
    # Given the cafe order with one malformed field
    raw = cafe_order()
    mutate(raw)
    # When normalized, then MalformedOrder carries a short reason that names the field
    with pytest.raises(MalformedOrder) as caught:
        normalize("clover", MERCHANT, raw)
    assert caught.value.reason == reason
    assert str(caught.value) == reason


def test_a_reason_never_carries_the_value() -> None:
    raw = cafe_order()
    raw["payments"]["elements"][0]["amount"] = "access_token=SECRETVALUE"
    with pytest.raises(MalformedOrder) as caught:
        normalize("clover", MERCHANT, raw)
    assert "SECRETVALUE" not in str(caught.value)


def test_not_an_object_unknown_provider_and_bad_merchant() -> None:
    with pytest.raises(MalformedOrder, match=r"^order: not an object$"):
        normalize("clover", MERCHANT, [cafe_order()])  # type: ignore[arg-type]
    with pytest.raises(UnknownProvider):
        normalize("square", MERCHANT, cafe_order())
    with pytest.raises(MalformedOrder, match="merchant_id"):
        normalize("clover", "", cafe_order())


def test_a_service_charge_definition_is_charged_on_the_discounted_nets_untaxed() -> None:
    # Given 10.00 of goods, a 1.00 order discount, 8.875 % tax on 9.00 (0.80) and an 18 %
    # service charge defined on the order (percentageDecimal 180000) that no payment reports
    definition = {"id": "SC1", "name": "Service", "enabled": True, "percentageDecimal": 180_000}
    raw = base_order(
        total=900 + 162 + 80,
        lineItems={"elements": [{"id": "L1", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]},
        discounts={"elements": [{"id": "D1", "name": "Comp", "amount": -100}]},
        serviceCharge=definition,
    )
    order = clover(raw)
    # Then the charge is 18 % of 9.00, and the tax the rates give: nothing flagged
    assert (order["totals"]["service_charge"], order["totals"]["tax"]) == (162, 80)
    assert order["discrepancies"] == []
    # When the device charged it on the nets before the order discount (18 % of 10.00)
    raw["total"] = 900 + 180 + 80
    order = clover(raw)
    # Then that basis is the one that makes the total add up
    assert (order["totals"]["service_charge"], order["totals"]["tax"]) == (180, 80)
    assert order["discrepancies"] == []


def test_a_service_charge_reference_only_is_malformed() -> None:
    raw = base_order(total=0, serviceCharge={"id": "SC1"})
    with pytest.raises(MalformedOrder, match=r"^serviceCharge: not expanded"):
        clover(raw)


@pytest.mark.parametrize(("off", "flagged"), [(0, False), (1, False), (-1, False), (2, True), (-3, True)])
def test_tax_that_disagrees_with_the_rates_by_more_than_a_cent_is_flagged(off: int, flagged: bool) -> None:
    # Given a 10.00 line taxed 8.875 % (0.89 by the rates) and a total off by `off` cents
    raw = base_order(
        total=1089 + off,
        lineItems={"elements": [{"id": "L1", "price": 1000, "taxRates": {"elements": [NY_TAX]}}]},
    )
    order = clover(raw)
    # Then the exported tax is the remainder (the totals add up), and it is flagged past a cent
    assert order["totals"]["tax"] == 89 + off
    expected = [{"field": "totals.tax", "value": 89 + off, "computed": 89}] if flagged else []
    assert order["discrepancies"] == expected
    assert_schema_valid(order)
