"""Clover v3 orders (every collection expanded, see ``source``) -> canonical order v1.1.

Register rows relied on (``docs/provider-contracts.md``): CLV-MONEY-1 (cents, epoch ms,
``unitQty`` in thousandths), CLV-TAX-1 (rates in 1/100000 of a percent, no order tax
field), CLV-EXPAND-1 (a collection not expanded is absent, or ``{"href"}`` only: never read
as empty), CLV-TENDER-1 (``tender.labelKey``), CLV-EXPAND-4 (``cardTransaction.cardType``),
CLV-SC-1, CLV-SC-2, CLV-SC-3 (the order's ``serviceCharge`` is a definition, its basis;
payments carry amounts), CLV-MISSING-1.

The arithmetic (docs/canonical-order-v1.md, "Clover"): per line
``gross = round((price + Σ modifications) * unitQty / 1000)``, line discounts
(percentages of ``gross``), ``net = gross + line discounts``; order discounts ``D``
(percentages of ``S = Σ net``) scale every taxable amount by ``(S + D) / S``; exclusive
tax per rate is ``round(Σ net of the taxed lines * (S + D) / S * rate)``, rounded once
per rate; VAT (``isVat``) is the share ``rate / (100 % + Σ rates)`` of each line's
scaled net, rounded per line and rate. Rounding is half away from zero, in integers.

The service charge is what the payments say they collected (``payments[].serviceCharge
.amount``); without those, the definition's ``percentageDecimal`` (percent x 10,000) of
``S + D`` (untaxed; or of ``S`` when only that basis makes the total add up: the record
names both). The order's ``total`` is authoritative: for a tax-exclusive order with line
items, ``tax`` is what remains of it after subtotal, discounts and service charge, so the
totals always add up; the tax computed from the rates is kept beside it, and a difference
of more than a cent is flagged in ``discrepancies`` (never absorbed).

A collection the order's own fields say must exist (``missing``) but that is absent, or a
collection or tender that came unexpanded (``{"href"}``, ``{id}`` only), makes the order
malformed: it is quarantined with the reason, never exported with an empty list.
"""

from __future__ import annotations

from typing import Any

from posync.canonical.fields import (
    card_brand,
    currency,
    epoch_ms,
    item,
    malformed,
    money,
    nested,
    number,
    obj,
    opt_id,
    opt_int,
    opt_money,
    opt_str,
    rdiv,
    ref_id,
    refund_state,
    req_id,
)
from posync.canonical.fields import elements as _elements
from posync.errors import MalformedOrder

# A Clover rate r (1/100000 %) is the fraction r / 10^7; a percentageDecimal p, p / 10^6.
TAX_SCALE = 10_000_000
SERVICE_CHARGE_SCALE = 1_000_000
TOLERANCE = 1  # minor units a derived figure may differ from its computation before it is flagged
SCHEMA_MINOR = 1
PAID_STATES = frozenset(("PAID", "PARTIALLY_PAID", "REFUNDED", "PARTIALLY_REFUNDED"))
REFUNDED_STATES = frozenset(("REFUNDED", "PARTIALLY_REFUNDED", "CREDITED"))


def elements(value: Any, path: str) -> list[Any] | None:
    """A Clover collection: ``{"elements": [...]}`` (or a list); None when absent (the order
    has none). ``{"href": ...}`` without elements means it was not expanded: malformed."""
    if value is None:
        return None
    if type(value) is dict and "elements" not in value and "href" in value:
        raise malformed(path, "not expanded (href only)")
    return _elements(value, path)


def missing(raw: dict[str, Any]) -> list[str]:
    """The collections absent from ``raw`` although its own fields say they exist, on an order
    with a total: payments on a paid or refunded order, refunds (or credits) on a refunded
    one, line items (unless a manual transaction)."""
    total = raw.get("total")
    if type(total) is not int or total == 0:
        return []  # nothing to pay, refund or itemize: an absent collection is an empty one
    gaps: list[str] = []
    state = raw.get("paymentState")
    state = state.upper() if isinstance(state, str) else None
    if raw.get("payments") is None and state in PAID_STATES:
        gaps.append("payments")
    if raw.get("refunds") is None and raw.get("credits") is None and state in REFUNDED_STATES:
        gaps.append("refunds")
    if raw.get("lineItems") is None and raw.get("manualTransaction") is not True:
        gaps.append("lineItems")
    return gaps


PAYMENT_STATUS: dict[str, str] = {
    "SUCCESS": "succeeded",
    "AUTH_COMPLETED": "succeeded",
    "AUTH": "authorized",
    "FAIL": "failed",
    "VOIDED": "voided",
}
TENDERS: dict[str, str] = {
    "com.clover.tender.cash": "cash",
    "com.clover.tender.credit_card": "card",
    "com.clover.tender.debit_card": "card",
}
# paymentState -> canonical state, when it decides alone.
PAYMENT_STATES: dict[str, str] = {
    "REFUNDED": "refunded",
    "CREDITED": "refunded",
    "PARTIALLY_REFUNDED": "partially_refunded",
    "OPEN": "open",
    "PARTIALLY_PAID": "open",
}


def _discount(d: dict[str, Any], basis: int) -> int:
    """A discount's (non-positive) amount: a fixed ``amount`` or a ``percentage`` of ``basis``."""
    amount = d.get("amount")
    if amount is not None:
        return -abs(money(amount, "amount"))
    pct = d.get("percentage")
    if pct is None:
        return 0
    p = number(pct, "percentage")
    if not 0 <= p <= 100:
        raise malformed("percentage", "outside 0..100")
    return -rdiv(max(basis, 0) * round(p * 1000), 100_000)


def _line(
    li: dict[str, Any], discounts: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[tuple[tuple[str, int], str | None, int]]]:
    """One line item (without its tax yet) and its raw tax rates."""
    unit_price = opt_money(li, "price", "price")
    price = unit_price
    qty_milli = opt_int(li.get("unitQty"), "unitQty")
    if qty_milli is None:
        qty_milli = 1000
    mods = elements(li.get("modifications"), "modifications")
    if mods:
        for j, m in enumerate(mods):
            try:
                price += opt_money(item(m, ""), "amount", "amount")
            except MalformedOrder as exc:
                raise nested(f"modifications[{j}]", exc) from None
    gross = price if qty_milli == 1000 else rdiv(price * qty_milli, 1000)
    line_discount = 0
    ds = elements(li.get("discounts"), "discounts")
    if ds:
        for j, d_raw in enumerate(ds):
            try:
                d = item(d_raw, "")
                amount = _discount(d, gross)
                name = opt_str(d.get("name"), "name")
            except MalformedOrder as exc:
                raise nested(f"discounts[{j}]", exc) from None
            line_discount += amount
            discounts.append({"name": name, "amount": amount})
    refunded = li.get("refunded")
    if refunded is not None and type(refunded) is not bool:
        raise malformed("refunded", "not a boolean")
    line = {
        "line_id": req_id(li.get("id"), "id"),
        "name": opt_str(li.get("name"), "name"),
        "sku": opt_id(li.get("itemCode"), "itemCode"),
        "quantity": qty_milli / 1000,
        "unit_price": unit_price,
        "discount": line_discount,
        "tax": 0,
        "total": gross + line_discount,
        "refunded": refunded is True,
    }
    return line, _rates(elements(li.get("taxRates"), "taxRates"))


def _rates(raw_rates: list[Any] | None) -> list[tuple[tuple[str, int], str | None, int]]:
    """A line's tax rates as ((key), name, rate in 1/100000 %)."""
    parsed: list[tuple[tuple[str, int], str | None, int]] = []
    if not raw_rates:
        return parsed
    for j, r_raw in enumerate(raw_rates):
        try:  # paths relative to the rate: formatted only for a reason
            r = item(r_raw, "")
            rate = opt_int(r.get("rate"), "rate")
            if rate is None or rate < 0:
                raise malformed("rate", "missing or negative")
            name = opt_str(r.get("name"), "name")
            key_id = opt_id(r.get("id"), "id") or name or ""
        except MalformedOrder as exc:
            raise nested(f"taxRates[{j}]", exc) from None
        parsed.append(((key_id, rate), name, rate))
    return parsed


def _taxes(
    lines: list[dict[str, Any]],
    rates: list[list[tuple[tuple[str, int], str | None, int]]],
    order_discount: int,
    vat: bool,
) -> list[dict[str, Any]]:
    """Fill each line's ``tax`` and return the per-rate breakdown.

    Order discounts scale every taxable amount by ``(S + D) / S`` exactly (``S`` = Σ line
    nets, ``D`` = order discounts), so the only rounding is the final one.
    """
    base = 0
    for line in lines:
        base += line["total"]
    num, den = (max(base + order_discount, 0), base) if base > 0 and order_discount else (1, 1)
    by_rate: dict[tuple[str, int], list[Any]] = {}  # key -> [name, rate, Σ net or Σ VAT]
    for line, parsed in zip(lines, rates, strict=True):
        if not parsed:
            continue
        net = max(line["total"], 0) * num
        line_tax = 0
        if vat:
            inclusive = TAX_SCALE
            for _, _, rate in parsed:
                inclusive += rate
            for key, name, rate in parsed:
                share = rdiv(net * rate, den * inclusive)
                line_tax += share
                by_rate.setdefault(key, [name, rate, 0])[2] += share
        else:
            for key, name, rate in parsed:
                line_tax += rdiv(net * rate, den * TAX_SCALE)
                by_rate.setdefault(key, [name, rate, 0])[2] += net
        line["tax"] = line_tax
    return [
        {
            "name": name,
            "rate": rate / 100_000,
            "amount": acc if vat else rdiv(acc * rate, den * TAX_SCALE),
        }
        for name, rate, acc in by_rate.values()
    ]


def _payment(p: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """One payment and its service charge amount (None: the payment carries none)."""
    result = p.get("result")
    if result is None:
        status = "succeeded"
    elif type(result) is str:
        status = PAYMENT_STATUS.get(result.upper(), "pending")
    else:
        raise malformed("result", "not a string")
    tender_obj = obj(p.get("tender"), "tender")
    if tender_obj and set(tender_obj) <= {"id", "href"}:
        raise malformed("tender", "not expanded (a reference only)")
    label_key = opt_str(tender_obj.get("labelKey"), "tender.labelKey")
    card = p.get("cardTransaction")
    if card is not None and type(card) is not dict:
        raise malformed("cardTransaction", "not an object")
    tender = TENDERS.get(label_key) if label_key else None
    if tender == "card" and card is None and status == "succeeded":
        raise malformed("cardTransaction", "missing on a card payment (not expanded)")
    if tender is None:
        tender = "card" if card else "other"
    created = p.get("createdTime")
    payment = {
        "payment_id": req_id(p.get("id"), "id"),
        "amount": money(p.get("amount"), "amount"),
        "tip": abs(opt_money(p, "tipAmount", "tipAmount")),
        "tax": opt_money(p, "taxAmount", "taxAmount"),
        "tender": tender,
        "card_brand": card_brand(card.get("cardType"), "cardTransaction.cardType")
        if card and tender == "card"
        else None,
        "status": status,
        "created_at": None if created is None else epoch_ms(created, "createdTime"),
    }
    service_charge = obj(p.get("serviceCharge"), "serviceCharge")
    charge = (
        None if "amount" not in service_charge else money(service_charge["amount"], "serviceCharge.amount")
    )
    return payment, charge


def _refund(r: dict[str, Any], with_payment: bool) -> dict[str, Any]:
    created = r.get("createdTime")
    return {
        "refund_id": req_id(r.get("id"), "id"),
        "payment_id": ref_id(r.get("payment"), "payment") if with_payment else None,
        "amount": abs(money(r.get("amount"), "amount")),
        "tax": abs(opt_money(r, "taxAmount", "taxAmount")),
        "tip": abs(opt_money(r, "tipAmount", "tipAmount")),
        "created_at": None if created is None else epoch_ms(created, "createdTime"),
    }


def _state(raw_state: str | None, payment_state: str | None, paid: int, refunded: int, total: int) -> str:
    if raw_state is None:
        return "hidden"
    lowered = raw_state.lower()
    if lowered in ("cancelled", "canceled"):
        return "cancelled"
    decided = PAYMENT_STATES.get(payment_state) if payment_state else None
    if decided is not None:
        return decided
    if payment_state == "PAID" or (payment_state is None and lowered in ("paid", "locked")):
        return refund_state(paid, refunded, total) or "paid"
    return "open"


def normalize_clover(merchant_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    order_id = req_id(raw.get("id"), "id")
    order_currency = currency(raw.get("currency"), "currency")
    created = raw.get("createdTime")
    if created is None:
        created = raw.get("clientCreatedTime")
    created_at = epoch_ms(created, "createdTime")
    modified_at = epoch_ms(raw.get("modifiedTime"), "modifiedTime")
    raw_state = opt_str(raw.get("state"), "state")
    payment_state = opt_str(raw.get("paymentState"), "paymentState")
    vat = raw.get("isVat") is True
    gaps = missing(raw)
    if gaps:
        raise malformed(gaps[0], "asked for but missing (the order's own fields say it exists)")

    discounts: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    line_rates: list[list[tuple[tuple[str, int], str | None, int]]] = []
    raw_lines = elements(raw.get("lineItems"), "lineItems")
    if raw_lines:
        for i, li in enumerate(raw_lines):
            try:
                line, rates = _line(item(li, ""), discounts)
            except MalformedOrder as exc:
                raise nested(f"lineItems[{i}]", exc) from None
            lines.append(line)
            line_rates.append(rates)
    subtotal = 0
    base = 0
    for line in lines:
        subtotal += line["total"] - line["discount"]
        base += line["total"]
    line_discount = base - subtotal

    order_discount = 0
    raw_discounts = elements(raw.get("discounts"), "discounts")
    if raw_discounts:
        for j, d_raw in enumerate(raw_discounts):
            try:
                d = item(d_raw, "")
                amount = _discount(d, base)
                name = opt_str(d.get("name"), "name")
            except MalformedOrder as exc:
                raise nested(f"discounts[{j}]", exc) from None
            order_discount += amount
            discounts.append({"name": name, "amount": amount})
    discount = line_discount + order_discount

    taxes: list[dict[str, Any]] = []
    if lines and raw.get("taxRemoved") is not True:
        taxes = _taxes(lines, line_rates, order_discount, vat)
    computed_tax = 0
    for t in taxes:
        computed_tax += t["amount"]

    payments: list[dict[str, Any]] = []
    paid = tip = 0
    charged: int | None = None  # Σ the counted payments' service charge amounts (None: none carried one)
    raw_payments = elements(raw.get("payments"), "payments")
    if raw_payments:
        for j, p in enumerate(raw_payments):
            try:
                payment, charge = _payment(item(p, ""))
            except MalformedOrder as exc:
                raise nested(f"payments[{j}]", exc) from None
            payments.append(payment)
            if payment["status"] == "succeeded":
                paid += payment["amount"]
                tip += payment["tip"]
                if charge is not None:
                    charged = (charged or 0) + charge

    refunds: list[dict[str, Any]] = []
    for key, with_payment in (("refunds", True), ("credits", False)):
        raw_refunds = elements(raw.get(key), key)
        if not raw_refunds:
            continue
        for j, r_raw in enumerate(raw_refunds):
            try:
                r = item(r_raw, "")
                if r.get("voided") is True:
                    continue
                refunds.append(_refund(r, with_payment))
            except MalformedOrder as exc:
                raise nested(f"{key}[{j}]", exc) from None
    refunded = 0
    for refund in refunds:
        refunded += refund["amount"]

    raw_total = raw.get("total")
    given_total = None if raw_total is None else money(raw_total, "total")
    service_charge = _service_charge(
        raw.get("serviceCharge"),
        charged,
        base,
        order_discount,
        discount,
        subtotal,
        computed_tax,
        given_total,
        vat,
    )
    if given_total is None:
        total = subtotal + discount + service_charge + (0 if vat else computed_tax)
    else:
        total = given_total
    discrepancies: list[dict[str, Any]] = []
    if vat or not lines:
        tax = computed_tax
        subtotal = total - discount - service_charge - tax
    else:
        tax = total - subtotal - discount - service_charge
        if raw.get("taxRemoved") is not True and abs(tax - computed_tax) > TOLERANCE:
            discrepancies.append({"field": "totals.tax", "value": tax, "computed": computed_tax})

    employee_id = ref_id(raw.get("employee"), "employee")
    device_id = ref_id(raw.get("device"), "device")
    return {
        "schema_version": 1,
        "schema_minor": SCHEMA_MINOR,
        "provider": "clover",
        "merchant_id": merchant_id,
        "order_id": order_id,
        "state": _state(raw_state, payment_state and payment_state.upper(), paid, refunded, total),
        "provider_state": raw_state,
        "currency": order_currency,
        "created_at": created_at,
        "modified_at": modified_at,
        "totals": {
            "subtotal": subtotal,
            "discount": discount,
            "tax": tax,
            "tip": tip,
            "service_charge": service_charge,
            "total": total,
            "paid": paid,
            "refunded": refunded,
        },
        "line_items": lines,
        "payments": payments,
        "refunds": refunds,
        "discounts": discounts,
        "taxes": taxes,
        "source": {"store_id": None, "device_id": device_id, "employee_id": employee_id},
        "discrepancies": discrepancies,
    }


def _service_charge(  # noqa: PLR0917 (one order's figures, named at the one call)
    definition: Any,
    charged: int | None,
    base: int,
    order_discount: int,
    discount: int,
    subtotal: int,
    computed_tax: int,
    total: int | None,
    vat: bool,
) -> int:
    """The order's service charge: what its payments collected, else the definition's
    percentage of the line nets after order discounts (``base + order_discount``, untaxed),
    or after line discounts only (``base``) when only that basis makes the total add up."""
    if charged is not None:
        return charged
    sc = obj(definition, "serviceCharge")
    if not sc:
        return 0
    pct = opt_int(sc.get("percentageDecimal"), "serviceCharge.percentageDecimal")
    if pct is None:
        if set(sc) <= {"id", "href"}:
            raise malformed("serviceCharge", "not expanded (a reference only)")
        return 0
    if not 0 <= pct <= 100 * 10_000:
        raise malformed("serviceCharge.percentageDecimal", "outside 0..100 %")
    after_discounts = rdiv(max(base + order_discount, 0) * pct, SERVICE_CHARGE_SCALE)
    line_basis = rdiv(max(base, 0) * pct, SERVICE_CHARGE_SCALE)
    if total is None or after_discounts == line_basis or vat:
        return after_discounts

    def off(charge: int) -> int:
        return abs(total - (subtotal + discount + charge + computed_tax))

    return line_basis if off(line_basis) <= TOLERANCE < off(after_discounts) else after_discounts
