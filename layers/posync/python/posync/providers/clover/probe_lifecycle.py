"""Probe checks for the register's deletion, refund and token rows (CLV-DEL-*, CLV-REFUND-*,
CLV-RECON-1, CLV-TOKEN-*), in the shape of ``posync.probe`` (``CHECKS``).

Read-only and small: a handful of list calls with ``limit`` 10 and a few reads by id. Where
the record is silent and posync is correct under every reading (CLV-DEL-2/3, CLV-REFUND-1),
a check ``holds`` whichever reading it sees and names it in ``detail``: the sandbox profile
the account behaves as. ``detail`` carries ids and times only, never a token.

``ctx`` is anything with ``merchant_id``, ``now_ms()`` and ``get(path, params) -> (status,
body)`` (a GET on the connection's API base with its token; errors as statuses, not raises);
optionally ``token_kind`` and ``provider_region``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from posync.probe import Check, Finding

DAY_MS = 86_400_000
SAMPLE = 10


class ProbeContext(Protocol):
    merchant_id: str

    def now_ms(self) -> int: ...

    def get(self, path: str, params: Sequence[tuple[str, str]] | None = None) -> tuple[int, Any]: ...


def _orders(ctx: ProbeContext, *filters: str, limit: int = SAMPLE) -> tuple[int, list[dict[str, Any]]]:
    params = [("filter", f) for f in filters] + [("limit", str(limit))]
    status, body = ctx.get(f"/v3/merchants/{ctx.merchant_id}/orders", params)
    rows = body.get("elements") if isinstance(body, dict) else None
    return status, [r for r in rows or [] if isinstance(r, dict)]


def _refunds(ctx: ProbeContext) -> tuple[int, list[dict[str, Any]]]:
    since = ctx.now_ms() - 30 * DAY_MS
    params = [("filter", f"createdTime>={since}"), ("limit", str(SAMPLE))]
    status, body = ctx.get(f"/v3/merchants/{ctx.merchant_id}/refunds", params)
    rows = body.get("elements") if isinstance(body, dict) else None
    return status, [r for r in rows or [] if isinstance(r, dict)]


def _deleted(ctx: ProbeContext) -> tuple[int, list[dict[str, Any]]]:
    return _orders(ctx, f"deletedTime>={ctx.now_ms() - 89 * DAY_MS}")


def deleted_timestamp(ctx: ProbeContext) -> Finding:
    status, rows = _deleted(ctx)
    if status != 200:
        return Finding("CLV-DEL-1", "not checkable", f"the deletedTime list answered {status}")
    if not rows:
        why = "no order deleted in the last 89 days (or lists omit them)"
        return Finding("CLV-DEL-1", "not checkable", why)
    bad = [str(r.get("id")) for r in rows if not isinstance(r.get("deletedTimestamp"), int)]
    if bad:
        return Finding("CLV-DEL-1", "differs", f"deleted orders without deletedTimestamp: {bad[:3]}")
    return Finding("CLV-DEL-1", "holds", f"{len(rows)} deleted order(s), each with deletedTimestamp")


def deleted_time_filter(ctx: ProbeContext) -> Finding:
    status, _ = _deleted(ctx)
    if status == 200:
        return Finding("CLV-DEL-5", "holds", "filter=deletedTime>=... accepted (200)")
    return Finding("CLV-DEL-5", "differs", f"filter=deletedTime answered {status}")


def lists_and_deleted(ctx: ProbeContext) -> Finding:
    status, rows = _deleted(ctx)
    if status != 200 or not rows:
        return Finding("CLV-DEL-2", "not checkable", "no deleted order to look for in the other lists")
    row = rows[0]
    t = row.get("modifiedTime")
    if not isinstance(t, int):
        return Finding("CLV-DEL-2", "not checkable", "the deleted order has no modifiedTime")
    _, window = _orders(ctx, f"modifiedTime>={t}", f"modifiedTime<={t}", limit=100)
    listed = any(r.get("id") == row.get("id") for r in window)
    moved = isinstance(row.get("deletedTimestamp"), int) and t >= row["deletedTimestamp"]
    reading = ("listed-moved" if moved else "listed-stale") if listed else "gone or filtered"
    seen = "show" if listed else "omit"
    return Finding("CLV-DEL-2", "holds", f"lists by modifiedTime {seen} it: {reading}")


def read_by_id(ctx: ProbeContext) -> Finding:
    status, rows = _deleted(ctx)
    if status != 200 or not rows:
        return Finding("CLV-DEL-3", "not checkable", "no deleted order to read by id")
    oid = str(rows[0].get("id"))
    got, body = ctx.get(f"/v3/merchants/{ctx.merchant_id}/orders/{oid}", None)
    if got == 404:
        return Finding("CLV-DEL-3", "holds", f"order {oid}: 404 (profile gone)")
    if got == 200 and isinstance(body, dict) and isinstance(body.get("deletedTimestamp"), int):
        return Finding("CLV-DEL-3", "holds", f"order {oid}: 200 with deletedTimestamp")
    return Finding("CLV-DEL-3", "differs", f"order {oid}: {got} without deletedTimestamp")


def delete_webhook(ctx: ProbeContext) -> Finding:
    return Finding("CLV-DEL-4", "not checkable", "webhooks cannot be observed by a read-only probe")


def refund_moves_modified(ctx: ProbeContext) -> Finding:
    status, refunds = _refunds(ctx)
    if status != 200 or not refunds:
        return Finding("CLV-REFUND-1", "not checkable", "no refund in the last 30 days")
    moved = silent = 0
    for r in refunds[:3]:
        ref = r.get("orderRef") or {}
        oid = ref.get("id") if isinstance(ref, dict) else None
        if not oid:
            continue
        got, order = ctx.get(f"/v3/merchants/{ctx.merchant_id}/orders/{oid}", None)
        if got != 200 or not isinstance(order, dict):
            continue
        if int(order.get("modifiedTime") or 0) >= int(r.get("createdTime") or 0):
            moved += 1
        else:
            silent += 1
    if not moved + silent:
        return Finding("CLV-REFUND-1", "not checkable", "no refunded order could be read")
    reading = "moves" if moved and not silent else "silent" if silent and not moved else "mixed"
    detail = f"refunds vs modifiedTime: {reading} ({moved}/{moved + silent} moved)"
    return Finding("CLV-REFUND-1", "holds", detail)


def refund_has_no_clock(ctx: ProbeContext) -> Finding:
    status, refunds = _refunds(ctx)
    if status != 200 or not refunds:
        return Finding("CLV-REFUND-2", "not checkable", "no refund in the last 30 days")
    clocked = [str(r.get("id")) for r in refunds if "modifiedTime" in r]
    if clocked:
        return Finding("CLV-REFUND-2", "differs", f"refunds with a modifiedTime: {clocked[:3]}")
    return Finding("CLV-REFUND-2", "holds", f"{len(refunds)} refund(s), none with modifiedTime")


def modified_after_created(ctx: ProbeContext) -> Finding:
    status, rows = _orders(ctx, f"modifiedTime>={ctx.now_ms() - 7 * DAY_MS}")
    if status != 200 or not rows:
        return Finding("CLV-RECON-1", "not checkable", "no order modified in the last 7 days")
    early = [
        str(r.get("id"))
        for r in rows
        if isinstance(r.get("createdTime"), int)
        and isinstance(r.get("modifiedTime"), int)
        and r["modifiedTime"] < r["createdTime"]
    ]
    if early:
        return Finding("CLV-RECON-1", "differs", f"modifiedTime before createdTime: {early[:3]}")
    return Finding("CLV-RECON-1", "holds", f"{len(rows)} order(s): modifiedTime >= createdTime")


def merchant_token_region(ctx: ProbeContext) -> Finding:
    kind = getattr(ctx, "token_kind", None)
    region = getattr(ctx, "provider_region", None)
    if kind is None or region is None:
        return Finding("CLV-TOKEN-1", "not checkable", "the connection's token kind is not known here")
    if kind == "merchant_api_token" and region != "sandbox":
        return Finding("CLV-TOKEN-1", "differs", f"a merchant API token outside the sandbox ({region})")
    return Finding("CLV-TOKEN-1", "holds", f"{kind} in region {region}")


def merchant_token_revoked(ctx: ProbeContext) -> Finding:
    return Finding("CLV-TOKEN-2", "not checkable", "needs a revoked token; the probe revokes nothing")


CHECKS: tuple[Check, ...] = (
    Check("CLV-DEL-1", "a deleted order carries deletedTimestamp", deleted_timestamp),
    Check("CLV-DEL-2", "which lists return deleted orders", lists_and_deleted),
    Check("CLV-DEL-3", "what a read by id of a deleted order answers", read_by_id),
    Check("CLV-DEL-4", "DELETE webhooks for O: objects", delete_webhook),
    Check("CLV-DEL-5", "deletedTime is an orders list filter", deleted_time_filter),
    Check("CLV-REFUND-1", "whether a refund moves the order's modifiedTime", refund_moves_modified),
    Check("CLV-REFUND-2", "refunds have no modifiedTime", refund_has_no_clock),
    Check("CLV-RECON-1", "modifiedTime >= createdTime", modified_after_created),
    Check("CLV-TOKEN-1", "merchant API tokens only in the sandbox", merchant_token_region),
    Check("CLV-TOKEN-2", "a merchant API token's 401 means revoked", merchant_token_revoked),
)
