"""Shared by the canonical order tests: the jsonschema check, a reference model of the
documented arithmetic (in exact fractions, written apart from the normalizers), and
hypothesis strategies that generate valid raw Clover and Poynt orders together with
what their canonical totals must be.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from functools import cache
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]

from posync.canonical import schema

Raw = dict[str, Any]


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema(), format_checker=FormatChecker())


def schema_errors(order: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(order)]


def assert_schema_valid(order: Any) -> None:
    errors = schema_errors(order)
    assert not errors, errors


def rhalf(x: Fraction) -> int:
    """Round half away from zero."""
    magnitude = math.floor(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def rfc3339(dt: datetime) -> str:
    utc = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------- Clover

CLOVER_RATES: list[tuple[str, str, int]] = [
    ("8G1Q2ZRQ1Y2MT", "State", 600_000),
    ("9H2R3ASR2Z3NV", "City", 287_500),
    ("AJ3S4BTS3A4PW", "VAT", 1_900_000),
    ("BK4T5CUT4B5QX", "Reduced", 700_000),
]
CLOVER_COUNTED_RESULTS = {"SUCCESS", "AUTH_COMPLETED", None}
START_MS = 1_577_836_800_000  # 2020-01-01
END_MS = 1_924_992_000_000  # 2031-01-01


@dataclass
class CloverExpected:
    """What the canonical totals must be, from the reference model."""

    total: int
    subtotal: int | None  # None: not determined by the reference (lines absent, or total off)
    discount: int
    tax: int | None
    service_charge: int
    paid: int
    tip: int
    refunded: int
    taxes: dict[str, int] = field(default_factory=dict)  # tax name -> amount


def clover_reference(raw: Raw) -> tuple[int, int, int, dict[str, int], int]:
    """(subtotal, discount, tax, per-name taxes, service charge) of a well-formed Clover order."""
    lines = raw.get("lineItems", {}).get("elements") or []
    vat = raw.get("isVat") is True
    nets: list[Fraction] = []
    subtotal = 0
    discount = 0
    for li in lines:
        mods = sum(m["amount"] for m in li.get("modifications", {}).get("elements", []))
        gross = rhalf(Fraction(li["price"] + mods) * Fraction(li.get("unitQty", 1000), 1000))
        line_discount = 0
        for d in li.get("discounts", {}).get("elements", []):
            if "amount" in d:
                line_discount -= abs(d["amount"])
            else:
                line_discount -= rhalf(Fraction(max(gross, 0) * d["percentage"], 100))
        subtotal += gross
        discount += line_discount
        nets.append(Fraction(gross + line_discount))
    base = sum(nets, Fraction(0))
    order_discount = 0
    for d in raw.get("discounts", {}).get("elements", []):
        if "amount" in d:
            order_discount -= abs(d["amount"])
        else:
            order_discount -= rhalf(max(base, Fraction(0)) * d["percentage"] / 100)
    discount += order_discount
    taxable_by_rate: dict[str, Fraction] = {}
    vat_by_rate: dict[str, int] = {}
    factor = max(base + order_discount, Fraction(0)) / base if base > 0 and order_discount else Fraction(1)
    if raw.get("taxRemoved") is not True:
        for li, net in zip(lines, nets, strict=True):
            taxable = max(net, Fraction(0)) * factor
            rates = li.get("taxRates", {}).get("elements", [])
            inclusive = Fraction(10**7 + sum(r["rate"] for r in rates))
            for r in rates:
                taxable_by_rate[r["name"]] = taxable_by_rate.get(r["name"], Fraction(0)) + taxable
                vat_by_rate[r["name"]] = vat_by_rate.get(r["name"], 0) + rhalf(
                    taxable * r["rate"] / inclusive
                )
    rate_of = {name: rate for _, name, rate in CLOVER_RATES}
    if vat:
        taxes = vat_by_rate
    else:
        taxes = {name: rhalf(t * rate_of[name] / 10**7) for name, t in taxable_by_rate.items()}
    service_charge = sum(
        p.get("serviceCharge", {}).get("amount", 0)
        for p in raw.get("payments", {}).get("elements", [])
        if p.get("result") in CLOVER_COUNTED_RESULTS
    )
    return subtotal, discount, sum(taxes.values()), taxes, service_charge


clover_ids = st.text("ABCDEFGHJKMNPQRSTVWXYZ0123456789", min_size=13, max_size=13)


@cache
def _sampled(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


def pick(draw: st.DrawFn, *options: Any) -> Any:
    """``draw(st.sampled_from(options))`` with the strategy built once per option list."""
    return draw(_sampled(options))


# Strategies built once (building them per draw dominates the run time).
_LINE_DISCOUNTS = st.lists(
    st.one_of(
        st.builds(lambda a: {"amount": -a}, st.integers(0, 1000)),
        st.builds(lambda p: {"percentage": p}, st.integers(0, 100)),
    ),
    max_size=2,
)
_ORDER_DISCOUNTS = st.lists(
    st.one_of(
        st.builds(lambda a: {"amount": -a}, st.integers(0, 500)),
        st.builds(lambda p: {"percentage": p}, st.integers(0, 50)),
    ),
    max_size=2,
)
_MODS = st.lists(st.integers(0, 500), max_size=2)
_RATES = st.lists(st.sampled_from(CLOVER_RATES), max_size=2, unique=True)


@st.composite
def clover_line(draw: st.DrawFn, index: int) -> Raw:
    line: Raw = {
        "id": f"L{index:012d}",
        "name": pick(draw, "Latte", "Bagel", "Beans 1kg", "Gift card", "Crème brûlée"),
        "price": draw(st.integers(0, 50_000)),
        "isRevenue": True,
        "refunded": draw(st.booleans()),
        "exchanged": False,
        "createdTime": START_MS,
    }
    if draw(st.booleans()):
        line["unitQty"] = draw(st.integers(1, 5000))
    if draw(st.booleans()):
        line["itemCode"] = pick(draw, "SKU-1", "012345678905", "BEANS")
    mods = draw(_MODS)
    empty_list = draw(st.booleans())
    if mods or empty_list:
        line["modifications"] = {
            "elements": [{"id": f"M{j}", "name": "Extra", "amount": a} for j, a in enumerate(mods)]
        }
    discounts = draw(_LINE_DISCOUNTS)
    if discounts:
        line["discounts"] = {
            "elements": [{"id": f"D{j}", "name": f"Promo {j}", **d} for j, d in enumerate(discounts)]
        }
    rates = draw(_RATES)
    line["taxRates"] = {"elements": [{"id": i, "name": n, "rate": r} for i, n, r in rates]}
    return line


@st.composite
def clover_orders(draw: st.DrawFn) -> tuple[Raw, CloverExpected]:
    """A valid Clover v3 order as the API returns it (expanded), and its expected totals."""
    created = draw(st.integers(START_MS, END_MS))
    raw: Raw = {
        "id": draw(clover_ids),
        "href": "https://sandbox/v3/merchants/M/orders/X",
        "currency": pick(draw, "USD", "CAD", "EUR", "GBP", "JPY"),
        "state": pick(draw, "open", "locked", "paid", None),
        "createdTime": created,
        "clientCreatedTime": created,
        "modifiedTime": draw(st.integers(created, END_MS)),
        "isVat": draw(st.booleans()),
        "taxRemoved": pick(draw, False, False, False, True),
        "manualTransaction": False,
        "testMode": False,
        "title": "Table 4",
        "note": "no nuts, call Jane at 555-0100",
        "employee": {"id": "EMPLOYEE00001"},
        "device": {"id": "DEVICE0000001"},
    }
    payment_state = pick(
        draw, None, "OPEN", "PAID", "PARTIALLY_PAID", "REFUNDED", "PARTIALLY_REFUNDED", "CREDITED"
    )
    if payment_state is not None:
        raw["paymentState"] = payment_state
    if raw["state"] is None:
        del raw["state"]  # Clover omits null fields: hidden orders have no state
    lines_mode = pick(draw, "lines", "lines", "lines", "empty", "absent")
    if lines_mode == "lines":
        n = draw(st.integers(1, 8))
        raw["lineItems"] = {"elements": [draw(clover_line(i)) for i in range(n)]}
    elif lines_mode == "empty":
        raw["lineItems"] = {"elements": []}
    else:
        raw["manualTransaction"] = True  # no line items at all: a quick-pay amount
    order_discounts = draw(_ORDER_DISCOUNTS)
    if order_discounts:
        raw["discounts"] = {
            "elements": [{"id": f"OD{j}", "name": f"Order {j}", **d} for j, d in enumerate(order_discounts)]
        }
    payments: list[Raw] = []
    for j in range(draw(st.integers(0, 3))):
        tender = pick(draw, "card", "cash", "other", "none")
        payment: Raw = {
            "id": f"P{j:012d}",
            "amount": draw(st.integers(0, 100_000)),
            "taxAmount": draw(st.integers(0, 5_000)),
            "cashbackAmount": 0,
            "createdTime": draw(st.integers(created, END_MS)),
            "modifiedTime": created,
        }
        result = pick(draw, "SUCCESS", "SUCCESS", "FAIL", "VOIDED", "AUTH", "AUTH_COMPLETED", None)
        if result is not None:
            payment["result"] = result
        if draw(st.booleans()):
            payment["tipAmount"] = draw(st.integers(0, 2_000))
        if draw(st.integers(0, 4)) == 0:
            payment["serviceCharge"] = {"id": "SC", "name": "Service", "amount": draw(st.integers(0, 900))}
        if tender == "card":
            payment["tender"] = {
                "id": "T1",
                "label": "Credit Card",
                "labelKey": "com.clover.tender.credit_card",
            }
            payment["cardTransaction"] = {
                "cardType": pick(draw, "VISA", "MC", "AMEX", "DISCOVER", "JCB"),
                "last4": "4242",
                "first6": "424242",
            }
        elif tender == "cash":
            payment["tender"] = {"id": "T2", "label": "Cash", "labelKey": "com.clover.tender.cash"}
        elif tender == "other":
            payment["tender"] = {"id": "T3", "label": "Check", "labelKey": "com.clover.tender.check"}
        payments.append(payment)
    if draw(st.integers(0, 2)):
        raw["payments"] = {"elements": payments}
    else:  # no payments at all (Clover leaves the key out): then the order is not paid
        payments = []
        if raw.get("paymentState") not in (None, "OPEN"):
            raw["paymentState"] = "OPEN"
    refunds: list[Raw] = []
    for j in range(draw(st.integers(0, 2))):
        refund: Raw = {
            "id": f"R{j:012d}",
            "amount": draw(st.integers(1, 5_000)),
            "taxAmount": draw(st.integers(0, 300)),
            "tipAmount": draw(st.integers(0, 300)),
            "createdTime": draw(st.integers(created, END_MS)),
        }
        if payments:
            refund["payment"] = {"id": draw(st.sampled_from(payments))["id"]}
        if draw(st.integers(0, 5)) == 0:
            refund["voided"] = True
        refunds.append(refund)
    raw["refunds"] = {"elements": refunds}
    credits: list[Raw] = []
    if draw(st.integers(0, 5)) == 0:
        credits.append({"id": "C000000000001", "amount": draw(st.integers(1, 900)), "createdTime": created})
        raw["credits"] = {"elements": credits}

    subtotal, discount, tax, taxes, service_charge = clover_reference(raw)
    has_lines = lines_mode == "lines"
    if not has_lines:
        tax = 0
    reference_total = subtotal + discount + service_charge + (0 if raw["isVat"] else tax)
    total_mode = pick(draw, "reference", "reference", "absent", "off")
    total = reference_total
    exact = total_mode != "off"
    if total_mode == "off":
        total = reference_total + draw(st.integers(-3, 3))  # a device that rounds differently
    if total_mode != "absent":
        raw["total"] = total
    counted = [p for p in payments if p.get("result") in CLOVER_COUNTED_RESULTS]
    expected = CloverExpected(
        total=total,
        subtotal=(total - discount - service_charge - tax) if (raw["isVat"] or not has_lines) else subtotal,
        discount=discount,
        tax=tax if exact or raw["isVat"] or not has_lines else None,
        service_charge=service_charge,
        paid=sum(p["amount"] for p in counted),
        tip=sum(p.get("tipAmount", 0) for p in counted),
        refunded=sum(r["amount"] for r in refunds + credits if not r.get("voided")),
        taxes=taxes if has_lines else {},
    )
    return raw, expected


# ---------------------------------------------------------------- Poynt

BUSINESS_ID = "3f1c2a9e-8b7d-4c6e-9a10-2b3c4d5e6f70"
POYNT_COUNTED = ("sale", "sale_refunded", "auth_capture", "auth_captured_in_place")


@dataclass
class PoyntExpected:
    created_at: str
    modified_at: str
    subtotal: int
    discount: int
    tax: int
    fee: int
    total: int
    paid: int
    tip: int
    refunded: int
    payments: int  # canonical payments: one per authorization chain
    refund_payment_ids: list[str | None]  # per canonical refund, in order
    line_totals: list[int]


@st.composite
def poynt_times(draw: st.DrawFn) -> tuple[str, datetime]:
    """An ISO 8601 time in one of the shapes Poynt (and its SDKs) write, and its instant."""
    dt = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=draw(st.integers(0, 10 * 365 * 86_400 * 10**6))
    )
    shape = pick(draw, "z", "z_ms", "z_us", "offset0", "offset", "naive")
    if shape == "z":
        dt = dt.replace(microsecond=0)
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ"), dt
    if shape == "z_ms":
        dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", dt
    if shape == "z_us":
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), dt
    if shape == "offset0":
        return dt.isoformat(), dt
    if shape == "offset":
        zone = timezone(timedelta(minutes=pick(draw, -480, -300, 60, 330, 600)))
        return dt.astimezone(zone).isoformat(), dt
    return dt.replace(tzinfo=None).isoformat(), dt


@st.composite
def poynt_orders(draw: st.DrawFn) -> tuple[Raw, PoyntExpected]:
    """A valid Poynt order and its expected canonical totals, built from a payments model."""
    created, created_dt = draw(poynt_times())
    updated, updated_dt = draw(poynt_times())
    currency = pick(draw, "USD", "CAD", "EUR", "JPY")
    items: list[Raw] = []
    subtotal = item_discounts = item_tax = 0
    line_totals: list[int] = []
    for i in range(draw(st.integers(0, 6))):
        quantity: float = pick(draw, 1.0, 2.0, 3.0, 0.5, 1.25, 0.333, 12.0)
        unit_price = draw(st.integers(0, 20_000))
        gross = rhalf(Fraction(unit_price) * Fraction(str(quantity)))
        disc = draw(st.integers(0, gross)) if gross and draw(st.booleans()) else 0
        rate = pick(draw, 0.0, 5.0, 8.875, 20.0)
        tax = rhalf(Fraction(gross - disc) * Fraction(str(rate)) / 100)
        it: Raw = {
            "id": i + 1,
            "name": f"Item {i}",
            "productId": str(uuid.UUID(int=i + 7)),
            "quantity": quantity,
            "unitPrice": unit_price,
            "unitOfMeasure": "EACH",
            "status": pick(draw, "ORDERED", "FULFILLED", "RETURNED"),
            "discount": disc,
            "fee": 0,
            "tax": tax,
            "taxes": [{"id": "t1", "type": "SALES", "rate": rate, "amount": tax}],
            "createdAt": created,
            "updatedAt": updated,
        }
        if disc:
            it["discounts"] = [{"amount": -disc, "customName": "Promo"}]
        if draw(st.booleans()):
            it["sku"] = f"SKU-{i}"
        items.append(it)
        subtotal += gross
        item_discounts += disc
        item_tax += tax
        line_totals.append(gross - disc)
    order_discount = draw(st.integers(0, 300))
    fee = draw(st.integers(0, 500))
    discount = -(item_discounts + order_discount)
    total = subtotal + discount + item_tax + fee
    amounts: Raw = {
        "subTotal": subtotal,
        "discountTotal": discount,
        "feeTotal": fee,
        "taxTotal": item_tax,
        "netTotal": total,
        "currency": currency,
    }
    omit = pick(draw, None, None, None, "taxTotal", "subTotal", "feeTotal+discountTotal")
    if omit == "feeTotal+discountTotal":
        if fee == 0 and discount == 0:
            del amounts["feeTotal"], amounts["discountTotal"]
    elif omit is not None:
        del amounts[omit]

    # Payments model -> transactions.
    transactions: list[Raw] = []
    paid = tip = refunded = 0
    counted: list[tuple[str, list[str], int]] = []  # (root id, ids refunds may point at, amount)
    n_payments = draw(st.integers(0, 3))
    for j in range(n_payments):
        kind = pick(
            draw,
            "sale",
            "sale",
            "sale_refunded",
            "auth_capture",
            "auth_captured_in_place",
            "auth_only",
            "voided_sale",
            "declined",
        )
        amount = draw(st.integers(0, 50_000))
        tip_amount = draw(st.integers(0, 1_000))
        cash = draw(st.booleans())
        funding: Raw = (
            {"type": "CASH"}
            if cash
            else {
                "type": "CREDIT_DEBIT",
                "card": {"type": "VISA", "numberLast4": "1111", "numberFirst6": "411111"},
            }
        )
        tx_amounts: Raw = {
            "transactionAmount": amount + tip_amount,
            "tipAmount": tip_amount,
            "currency": currency,
        }
        if draw(st.booleans()):
            tx_amounts["orderAmount"] = amount
        tx_id = str(uuid.UUID(int=1000 + j))
        action, status = {
            "sale": ("SALE", "CAPTURED"),
            "sale_refunded": ("SALE", "REFUNDED"),
            "auth_capture": ("AUTHORIZE", "CAPTURED"),
            "auth_captured_in_place": ("AUTHORIZE", "CAPTURED"),
            "auth_only": ("AUTHORIZE", "AUTHORIZED"),
            "voided_sale": ("SALE", "VOIDED"),
            "declined": ("SALE", "DECLINED"),
        }[kind]
        base_tx: Raw = {
            "id": tx_id,
            "action": action,
            "status": status,
            "amounts": tx_amounts,
            "fundingSource": funding,
            "createdAt": created,
            "updatedAt": updated,
        }
        transactions.append(base_tx)
        refundable = [tx_id]
        if kind == "auth_capture":
            capture_id = str(uuid.UUID(int=2000 + j))
            transactions.append({**base_tx, "id": capture_id, "action": "CAPTURE", "parentId": tx_id})
            refundable.append(capture_id)
        if kind in POYNT_COUNTED:
            paid += amount
            tip += tip_amount
            counted.append((tx_id, refundable, amount))
    for k in range(draw(st.integers(0, 2)) if counted else 0):
        _, refundable, amount = draw(st.sampled_from(counted))
        refund_amount = draw(st.integers(1, max(amount, 1)))
        voided = draw(st.integers(0, 4)) == 0
        transactions.append(
            {
                "id": str(uuid.UUID(int=3000 + k)),
                "action": "REFUND",
                "status": "VOIDED" if voided else "REFUNDED",
                "parentId": draw(st.sampled_from(refundable)),
                "amounts": {
                    "transactionAmount": refund_amount,
                    "orderAmount": refund_amount,
                    "currency": currency,
                },
                "fundingSource": {"type": "CREDIT_DEBIT"},
                "createdAt": updated,
            }
        )
        if not voided:
            refunded += refund_amount
    transactions = draw(st.permutations(transactions))
    # Canonical refunds keep the raw order of the refund transactions, and point at the root payment.
    root_of = {tx_id: root for root, refundable, _ in counted for tx_id in refundable}
    refund_payment_ids: list[str | None] = [
        root_of[tx["parentId"]]
        for tx in transactions
        if tx["action"] == "REFUND" and tx["status"] != "VOIDED"
    ]

    raw: Raw = {
        "id": str(uuid.UUID(int=draw(st.integers(1, 2**64)))),
        "createdAt": created,
        "updatedAt": updated,
        "orderNumber": str(draw(st.integers(1, 99_999))),
        "context": {
            "businessId": pick(draw, BUSINESS_ID, BUSINESS_ID.upper()),
            "storeId": "c394627f-4f68-47fb-90a5-684ea801a352",
            "storeDeviceId": "urn:tid:48c54303-6d51-39af-bdeb-4af53f621652",
            "source": "INSTORE",
            "employeeId": 5247,
        },
        "statuses": {
            "status": pick(draw, "OPENED", "COMPLETED", "CANCELLED"),
            "fulfillmentStatus": "FULFILLED",
            "transactionStatusSummary": "COMPLETED",
        },
        "amounts": amounts,
        "items": items,
        "discounts": [{"amount": -order_discount, "customName": "Order promo"}] if order_discount else [],
        "transactions": transactions,
    }
    expected = PoyntExpected(
        created_at=rfc3339(created_dt),
        modified_at=rfc3339(updated_dt),
        subtotal=subtotal,
        discount=discount,
        tax=item_tax,
        fee=fee,
        total=total,
        paid=paid,
        tip=tip,
        refunded=refunded,
        payments=n_payments,
        refund_payment_ids=refund_payment_ids,
        line_totals=line_totals,
    )
    return raw, expected
