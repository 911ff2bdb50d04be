"""Poynt orders (``GET /businesses/{id}/orders``) -> canonical order v1.

Poynt facts relied on: money in cents, ISO 8601 UTC times, ``amounts`` with
``subTotal``, ``discountTotal`` (negative), ``taxTotal``, ``feeTotal`` and
``netTotal = subTotal + discountTotal + taxTotal + feeTotal``; ``items`` with a float
``quantity`` and a per-unit ``unitPrice``; ``transactions`` of action SALE,
AUTHORIZE, CAPTURE (``parentId`` = the authorization) or REFUND (``parentId`` = the
payment refunded), whose ``amounts.transactionAmount`` is ``orderAmount + tipAmount +
cashbackAmount``.

Lenient where Poynt's model allows absence, strict where identity is at stake (PNT-ITEM-ID,
PNT-TIP-TOTALS): an item without ``id`` gets a derived line id (:func:`derived_line_id`,
stable across versions of the order while its items keep their places); tips come from the
transactions, or from ``amounts.capturedTotals.tipAmount`` when the order carries no
transactions at all (there is no ``tipTotal``). An order without its own ``id``, or of another
business, is still quarantined.

Payments are counted once per authorization chain: a CAPTURE whose parent is an
AUTHORIZE in the same order updates that payment (amount, tip, status) instead of
adding one; refunds of either id point at the authorization's id. VOIDED
transactions stay in ``payments`` with status ``voided`` and count nowhere; voided
refunds are dropped.
"""

from __future__ import annotations

from typing import Any

from posync.canonical.fields import (
    card_brand,
    currency,
    elements,
    iso_time,
    item,
    malformed,
    money,
    nested,
    number,
    obj,
    opt_id,
    opt_money,
    opt_str,
    rdiv,
    refund_state,
    req_id,
)
from posync.errors import MalformedOrder

PAYMENT_STATUS: dict[str, str] = {
    "CAPTURED": "succeeded",
    "SETTLED": "succeeded",
    "COMPLETED": "succeeded",
    "AUTHORIZED": "authorized",
    "REFUNDED": "refunded",
    "PARTIALLY_REFUNDED": "refunded",
    "VOIDED": "voided",
    "DECLINED": "failed",
    "FAILED": "failed",
}
FUNDING: dict[str, str] = {"CREDIT_DEBIT": "card", "CASH": "cash"}
PAYMENT_ACTIONS = frozenset({"SALE", "AUTHORIZE", "CAPTURE", "OFFLINE_AUTHORIZE"})
COUNTED = frozenset({"succeeded", "refunded"})
RETURNED = frozenset({"RETURNED", "REFUNDED"})


def _discount_entries(raw: Any, out: list[dict[str, Any]]) -> None:
    entries = elements(raw, "discounts")
    if not entries:
        return
    for j, d_raw in enumerate(entries):
        d = item(d_raw, f"discounts[{j}]")
        out.append(
            {
                "name": opt_str(d.get("customName"), f"discounts[{j}].customName")
                or opt_str(d.get("name"), f"discounts[{j}].name"),
                "amount": -abs(opt_money(d, "amount", f"discounts[{j}].amount")),
            }
        )


def derived_line_id(position: int, it: dict[str, Any]) -> str:
    """The line id of an item Poynt sent without ``id``: ``~<position>-<8 hex>``, the hex from its
    ``productId``/``sku``/``name`` (a ``~`` never starts a Poynt item id, an integer)."""
    import hashlib

    basis = "|".join(str(it.get(k) or "") for k in ("productId", "sku", "name"))
    return f"~{position + 1}-{hashlib.sha1(basis.encode(), usedforsecurity=False).hexdigest()[:8]}"


def _line(
    it: dict[str, Any],
    discounts: list[dict[str, Any]],
    taxes: dict[tuple[str, float], list[Any]],
    position: int = 0,
) -> dict[str, Any]:
    raw_qty = it.get("quantity")
    quantity = 1.0 if raw_qty is None else number(raw_qty, "quantity")
    unit_price = opt_money(it, "unitPrice", "unitPrice")
    gross = rdiv(unit_price * round(quantity * 1000), 1000)
    discount = -abs(opt_money(it, "discount", "discount"))
    line_tax = 0
    item_taxes = elements(it.get("taxes"), "taxes")
    if item_taxes:
        for j, t_raw in enumerate(item_taxes):
            t = item(t_raw, f"taxes[{j}]")
            amount = opt_money(t, "amount", f"taxes[{j}].amount")
            raw_rate = t.get("rate")
            rate = 0.0 if raw_rate is None else number(raw_rate, f"taxes[{j}].rate")
            if rate < 0:
                raise malformed(f"taxes[{j}].rate", "negative")
            name = opt_str(t.get("type"), f"taxes[{j}].type") or opt_id(t.get("id"), f"taxes[{j}].id") or ""
            line_tax += amount
            taxes.setdefault((name, rate), [name or None, rate, 0])[2] += amount
    raw_tax = it.get("tax")
    if raw_tax is not None:
        line_tax = money(raw_tax, "tax")
    _discount_entries(it.get("discounts"), discounts)
    status = opt_str(it.get("status"), "status")
    return {
        "line_id": derived_line_id(position, it) if it.get("id") is None else req_id(it.get("id"), "id"),
        "name": opt_str(it.get("name"), "name"),
        "sku": opt_id(it.get("sku"), "sku"),
        "quantity": quantity,
        "unit_price": unit_price,
        "discount": discount,
        "tax": line_tax,
        "total": gross + discount,
        "refunded": status is not None and status.upper() in RETURNED,
    }


def _transaction(tx: dict[str, Any]) -> tuple[str, str | None, dict[str, Any], str]:
    """(action, parentId, canonical payment, canonical status) of one transaction."""
    action = opt_str(tx.get("action"), "action")
    raw_status = opt_str(tx.get("status"), "status")
    status = PAYMENT_STATUS.get(raw_status.upper(), "pending") if raw_status else "pending"
    if tx.get("voided") is True:
        status = "voided"
    amounts = obj(tx.get("amounts"), "amounts")
    tip = abs(opt_money(amounts, "tipAmount", "amounts.tipAmount"))
    order_amount = amounts.get("orderAmount")
    if order_amount is not None:
        amount = abs(money(order_amount, "amounts.orderAmount"))
    else:
        cashback = abs(opt_money(amounts, "cashbackAmount", "amounts.cashbackAmount"))
        amount = abs(money(amounts.get("transactionAmount"), "amounts.transactionAmount")) - tip - cashback
    funding = obj(tx.get("fundingSource"), "fundingSource")
    funding_type = opt_str(funding.get("type"), "fundingSource.type")
    tender = FUNDING.get(funding_type.upper(), "other") if funding_type else "other"
    card = obj(funding.get("card"), "fundingSource.card") if tender == "card" else {}
    created = tx.get("createdAt")
    payment = {
        "payment_id": req_id(tx.get("id"), "id"),
        "amount": amount,
        "tip": tip,
        "tax": 0,
        "tender": tender,
        "card_brand": card_brand(card.get("type"), "fundingSource.card.type"),
        "status": status,
        "created_at": None if created is None else iso_time(created, "createdAt"),
    }
    return (action or "").upper(), opt_id(tx.get("parentId"), "parentId"), payment, status


def _money_flow(
    raw_txs: list[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Payments (one per authorization chain) and refunds from the transactions."""
    parsed: list[tuple[str, str | None, dict[str, Any], str]] = []
    for j, tx in enumerate(raw_txs):
        try:
            parsed.append(_transaction(item(tx, "")))
        except MalformedOrder as exc:
            raise nested(f"transactions[{j}]", exc) from None
    payments: dict[str, dict[str, Any]] = {}
    root: dict[str, str] = {}
    for action, _, payment, _ in parsed:
        if action in PAYMENT_ACTIONS and action != "CAPTURE":
            payments[payment["payment_id"]] = payment
            root[payment["payment_id"]] = payment["payment_id"]
    for action, parent, payment, status in parsed:
        if action != "CAPTURE":
            continue
        auth = payments.get(parent) if parent else None
        if auth is None:
            payments[payment["payment_id"]] = payment
            root[payment["payment_id"]] = payment["payment_id"]
        elif status != "voided":
            auth["amount"] = payment["amount"]
            auth["tip"] = payment["tip"]
            if auth["status"] != "voided":
                auth["status"] = status
            root[payment["payment_id"]] = auth["payment_id"]
    refunds: list[dict[str, Any]] = []
    for action, parent, payment, status in parsed:
        if action != "REFUND" or status == "voided":
            continue
        refunds.append(
            {
                "refund_id": payment["payment_id"],
                "payment_id": root.get(parent, parent) if parent else None,
                "amount": payment["amount"],
                "tax": 0,
                "tip": payment["tip"],
                "created_at": payment["created_at"],
            }
        )
    return list(payments.values()), refunds


def _state(status: str | None, summary: str | None, paid: int, refunded: int, total: int) -> str:
    upper = status.upper() if status else ""
    if upper in ("CANCELLED", "CANCELED"):
        return "cancelled"
    refunds = refund_state(paid, refunded, total)
    if refunds is None and summary:
        summary = summary.upper()
        if summary == "REFUNDED":
            refunds = "refunded"
        elif summary == "PARTIALLY_REFUNDED":
            refunds = "partially_refunded"
    if refunds is not None:
        return refunds
    if upper == "COMPLETED":
        return "completed"
    if total > 0 and paid >= total:
        return "paid"
    return "open"


def _totals(amounts: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(subtotal, discount, tax, fee, total), checked to add up."""
    total = money(amounts.get("netTotal"), "amounts.netTotal")
    discount = -abs(opt_money(amounts, "discountTotal", "amounts.discountTotal"))
    fee = opt_money(amounts, "feeTotal", "amounts.feeTotal")
    raw_sub = amounts.get("subTotal")
    raw_tax = amounts.get("taxTotal")
    tax = 0 if raw_tax is None else money(raw_tax, "amounts.taxTotal")
    if raw_sub is None:
        return total - discount - fee - tax, discount, tax, fee, total
    subtotal = money(raw_sub, "amounts.subTotal")
    if raw_tax is None:
        return subtotal, discount, total - subtotal - discount - fee, fee, total
    if subtotal + discount + tax + fee != total:
        raise malformed("amounts.netTotal", "is not subTotal + discountTotal + taxTotal + feeTotal")
    return subtotal, discount, tax, fee, total


def normalize_poynt(merchant_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    order_id = req_id(raw.get("id"), "id")
    context = obj(raw.get("context"), "context")
    business_id = opt_id(context.get("businessId"), "context.businessId")
    if business_id is not None and business_id.lower() != merchant_id.lower():
        raise malformed("context.businessId", "is another business")
    amounts = raw.get("amounts")
    if type(amounts) is not dict:
        raise malformed("amounts", "missing" if amounts is None else "not an object")
    created_at = iso_time(raw.get("createdAt"), "createdAt")
    modified_at = iso_time(raw.get("updatedAt"), "updatedAt")
    statuses = obj(raw.get("statuses"), "statuses")
    status = opt_str(statuses.get("status"), "statuses.status")
    summary = opt_str(statuses.get("transactionStatusSummary"), "statuses.transactionStatusSummary")

    discounts: list[dict[str, Any]] = []
    taxes: dict[tuple[str, float], list[Any]] = {}
    lines: list[dict[str, Any]] = []
    raw_items = elements(raw.get("items"), "items")
    if raw_items:
        for i, it in enumerate(raw_items):
            try:
                lines.append(_line(item(it, ""), discounts, taxes, i))
            except MalformedOrder as exc:
                raise nested(f"items[{i}]", exc) from None
    _discount_entries(raw.get("discounts"), discounts)

    payments: list[dict[str, Any]] = []
    refunds: list[dict[str, Any]] = []
    raw_txs = elements(raw.get("transactions"), "transactions")
    if raw_txs:
        payments, refunds = _money_flow(raw_txs)

    raw_currency = amounts.get("currency")
    if raw_currency is None and raw_txs:
        first = raw_txs[0]
        raw_currency = obj(first.get("amounts"), "transactions[0].amounts").get("currency")
    order_currency = currency(raw_currency, "amounts.currency")

    subtotal, discount, tax, fee, total = _totals(amounts)
    paid = tip = refunded = 0
    for payment in payments:
        if payment["status"] in COUNTED:
            paid += payment["amount"]
            tip += payment["tip"]
    for refund in refunds:
        refunded += refund["amount"]
    if raw.get("transactions") is None:
        # No transactions sent: the *Totals objects are the only source of what was paid and tipped.
        captured = obj(amounts.get("capturedTotals"), "amounts.capturedTotals")
        refunded_totals = obj(amounts.get("refundedTotals"), "amounts.refundedTotals")
        paid = abs(opt_money(captured, "orderAmount", "amounts.capturedTotals.orderAmount"))
        tip = abs(opt_money(captured, "tipAmount", "amounts.capturedTotals.tipAmount"))
        refunded = abs(opt_money(refunded_totals, "orderAmount", "amounts.refundedTotals.orderAmount"))

    employee = context.get("employeeUserId", context.get("employeeId"))
    return {
        "schema_version": 1,
        "provider": "poynt",
        "merchant_id": merchant_id,
        "order_id": order_id,
        "state": _state(status, summary, paid, refunded, total),
        "provider_state": status,
        "currency": order_currency,
        "created_at": created_at,
        "modified_at": modified_at,
        "totals": {
            "subtotal": subtotal,
            "discount": discount,
            "tax": tax,
            "tip": tip,
            "service_charge": fee,
            "total": total,
            "paid": paid,
            "refunded": refunded,
        },
        "line_items": lines,
        "payments": payments,
        "refunds": refunds,
        "discounts": discounts,
        "taxes": [{"name": name, "rate": rate, "amount": amount} for name, rate, amount in taxes.values()],
        "source": {
            "store_id": opt_id(context.get("storeId"), "context.storeId"),
            "device_id": opt_id(context.get("storeDeviceId"), "context.storeDeviceId"),
            "employee_id": opt_id(employee, "context.employeeId"),
        },
    }
