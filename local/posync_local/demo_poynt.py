"""The demo's field-by-field ground truth for Poynt orders, computed from the sandbox's raw order
without posync's normalizer: totals, tips, tenders, cancellations and refunds.

Each figure comes from the source a reader of Poynt's docs would take it from: money from
``amounts`` (``netTotal``, ``subTotal``, ``taxTotal``, ``discountTotal``, ``feeTotal``), what was
paid and tipped from ``capturedTotals`` (there is no ``tipTotal``), refunds from
``refundedTotals`` or, where the order has none, its REFUND transactions, tenders from the
captured transactions' ``fundingSource``, a cancellation from ``statuses.status``.
"""

from __future__ import annotations

from typing import Any

TENDERS = {"CASH": "cash", "CREDIT_DEBIT": "card"}
FIELDS = (
    "total",
    "subtotal",
    "tax",
    "discount",
    "service_charge",
    "paid",
    "tip",
    "refunded",
    "tenders",
    "state",
)


def truth(raw: dict[str, Any]) -> dict[str, Any]:
    """What the exported canonical order must say, from the raw Poynt order alone."""
    a = raw.get("amounts") or {}
    captured = a.get("capturedTotals") or {}
    txns = [t for t in raw.get("transactions") or [] if isinstance(t, dict)]
    refunded_totals = a.get("refundedTotals")
    if refunded_totals is not None:
        refunded = int(refunded_totals.get("orderAmount") or 0)
    else:
        refunded = sum(
            int((t.get("amounts") or {}).get("orderAmount") or 0)
            for t in txns
            if t.get("action") == "REFUND" and t.get("status") != "VOIDED"
        )
    cancelled = (raw.get("statuses") or {}).get("status") == "CANCELLED"
    paid = int(captured.get("orderAmount") or 0)
    tenders = sorted(
        {
            TENDERS.get(str((t.get("fundingSource") or {}).get("type")), "other")
            for t in txns
            if t.get("action") in ("SALE", "CAPTURE") and t.get("status") != "VOIDED"
        }
    )
    return {
        "total": a.get("netTotal"),
        "subtotal": a.get("subTotal"),
        "tax": a.get("taxTotal"),
        "discount": -abs(int(a.get("discountTotal") or 0)),
        "service_charge": int(a.get("feeTotal") or 0),
        "paid": paid,
        "tip": int(captured.get("tipAmount") or 0),
        "refunded": refunded,
        "tenders": tenders,
        "cancelled": cancelled,
    }


def differences(raw: dict[str, Any], exported: dict[str, Any]) -> list[str]:
    """The ground-truth fields on which the exported order disagrees with the raw one."""
    want = truth(raw)
    totals = exported.get("totals") or {}
    got = {
        k: totals.get(k) for k in ("total", "subtotal", "tax", "discount", "service_charge", "paid", "tip")
    }
    got["refunded"] = totals.get("refunded")
    got["tenders"] = sorted(
        {
            p.get("tender")
            for p in exported.get("payments") or []
            if p.get("status") in ("succeeded", "refunded")
        }
    )
    got["cancelled"] = exported.get("state") == "cancelled"
    return [f"poynt {k}" for k in want if want[k] != got[k]]


def change_older_orders(sandbox: Any, business_id: str) -> list[str]:
    """Between the backfill and the scheduled run: the oldest paid orders are cancelled (2),
    partly refunded (2) and fully refunded (1), and one loses its item ids. Returns their ids."""
    by_age = sorted(sandbox.orders(business_id), key=lambda o: o["createdAt"])
    paid = [
        o for o in by_age if (o["amounts"].get("capturedTotals") and o["statuses"]["status"] != "CANCELLED")
    ]
    if len(paid) < 6:
        return []
    for o in paid[:2]:
        sandbox.cancel_order(business_id, o["id"])
    for o in paid[2:4]:
        sandbox.refund_order(business_id, o["id"], max(1, o["amounts"]["capturedTotals"]["orderAmount"] // 4))
    sandbox.refund_order(business_id, paid[4]["id"])
    sandbox.strip_item_ids(business_id, paid[5]["id"])
    return [str(o["id"]) for o in paid[:6]]
