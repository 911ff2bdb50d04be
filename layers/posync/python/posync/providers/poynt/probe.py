"""``posync probe poynt BUSINESS_ID``: read-only checks of the register's ``PNT-…`` rows.

``context(transport, merchant_id)`` builds what the checks get (:class:`PoyntProbe`): the
connection's transport and a few small list reads, cached. Each check spends at most a few
GETs (``limit`` at most 100) and reports what it saw without any personal field or token.
Rows whose behaviour posync does not rely on (what ``startAt``/``endAt`` filter, row order,
the link's ``rel``) are reported as ``holds`` with what was seen in ``detail``: the register
keeps the observation, posync is right either way.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posync.errors import InvalidInput
from posync.probe import Check, Finding
from posync.ratelimit import Deadline
from posync.sources import iso_to_ms, ms_to_iso
from posync.transport import Transport, parse_json

PAGE = 100
REQUEST_S = 60.0


@dataclass
class PoyntProbe:
    transport: Transport
    business_id: str
    _cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/businesses/{self.business_id}/orders"

    def page(
        self, params: tuple[tuple[str, str], ...] = (), since_ms: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, body) of one list call (cached): ``limit=100`` unless ``params`` says."""
        key = (params, since_ms)
        if key not in self._cache:
            query = dict((("limit", str(PAGE)), *params))
            headers = {}
            if since_ms is not None:
                headers["If-Modified-Since"] = email.utils.formatdate(since_ms // 1000, usegmt=True)
            reply = self.transport.get(
                self.path,
                list(query.items()),
                headers=headers,
                deadline=Deadline.after(REQUEST_S),
                parse=False,
            )
            body = {} if reply.status == 304 or not reply.body else parse_json(reply.body, reply.status)
            self._cache[key] = (reply.status, body if isinstance(body, dict) else {})
        return self._cache[key]  # type: ignore[no-any-return]

    def orders(self) -> list[dict[str, Any]]:
        _, body = self.page()
        rows = body.get("orders")
        return [o for o in rows if isinstance(o, dict)] if isinstance(rows, list) else []


def context(transport: Transport, merchant_id: str) -> PoyntProbe:
    return PoyntProbe(transport, merchant_id)


def _ms(value: Any) -> int | None:
    try:
        return iso_to_ms(value)
    except InvalidInput:
        return None


def _none(row: str, why: str) -> Finding:
    return Finding(row, "not checkable", why)


def check_business(ctx: PoyntProbe) -> Finding:
    row = "PNT-CONSENT-BIZ"
    reply = ctx.transport.get(f"/businesses/{ctx.business_id}", deadline=Deadline.after(REQUEST_S))
    got = reply.body.get("id") if isinstance(reply.body, dict) else None
    if got == ctx.business_id:
        return Finding(row, "holds", "the connection's token reads /businesses/{id} of its business")
    return Finding(row, "differs", "GET /businesses/{id} answered another or no id")


def check_times(ctx: PoyntProbe) -> Finding:
    row = "PNT-TIMES"
    orders = ctx.orders()
    if not orders:
        return _none(row, "the business has no orders")
    bad = sum(1 for o in orders if _ms(o.get("createdAt")) is None or _ms(o.get("updatedAt")) is None)
    if bad:
        return Finding(row, "differs", f"{bad} of {len(orders)} orders lack an ISO 8601 createdAt/updatedAt")
    return Finding(row, "holds", f"{len(orders)} orders with ISO 8601 createdAt and updatedAt")


def check_ims(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-IMS"
    times = sorted(t for o in ctx.orders() if (t := _ms(o.get("updatedAt"))) is not None)
    if len(times) < 2:
        return _none(row, "fewer than two orders to compare")
    bound = times[len(times) // 2] // 1000 * 1000
    status, body = ctx.page(since_ms=bound)
    rows = body.get("orders") if isinstance(body, dict) else None
    got = [t for o in rows or [] if isinstance(o, dict) and (t := _ms(o.get("updatedAt"))) is not None]
    early = sum(1 for t in got if t < bound)
    if status == 304 or early:
        return Finding(
            row, "differs", f"If-Modified-Since {ms_to_iso(bound)}: {status}, {early} rows updated before it"
        )
    expected = sum(1 for t in times if t >= bound)
    if len(times) < PAGE and len(got) < expected:
        return Finding(
            row, "differs", f"If-Modified-Since kept {len(got)} of {expected} orders updated at or after it"
        )
    return Finding(
        row, "holds", f"If-Modified-Since {ms_to_iso(bound)}: {len(got)} rows, none updated before it"
    )


def check_304(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-304"
    times = [t for o in ctx.orders() if (t := _ms(o.get("updatedAt"))) is not None]
    if not times:
        return _none(row, "the business has no orders")
    future = max(times) + 3_600_000 * 24 * 365  # a year after the newest order: nothing can match
    status, body = ctx.page(since_ms=future)
    rows = body.get("orders") if isinstance(body, dict) else None
    if status == 304:
        return Finding(row, "holds", "nothing modified since the date: 304")
    if status == 200 and not rows:
        return Finding(row, "holds", "nothing modified since the date: 200 with no rows (handled alike)")
    return Finding(row, "differs", f"nothing modified since the date, yet {status} with rows")


def check_window(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-WINDOW"
    best: tuple[int, int, str] | None = None
    for o in ctx.orders():
        c, u, oid = _ms(o.get("createdAt")), _ms(o.get("updatedAt")), o.get("id")
        gap = u - c if c is not None and u is not None else 0
        wider = best is None or gap > best[1] - best[0]
        if c is not None and u is not None and isinstance(oid, str) and gap > 10_000 and wider:
            best = (c, u, oid)
    if best is None:
        return _none(row, "no order was updated more than 10 s after it was created")
    created, updated, oid = best

    def around(t: int) -> bool:
        params = (("startAt", ms_to_iso(t - 1000)), ("endAt", ms_to_iso(t + 1000)))
        _, body = ctx.page(params)
        rows = body.get("orders") if isinstance(body, dict) else None
        return any(isinstance(r, dict) and r.get("id") == oid for r in rows or [])

    by_created, by_updated = around(created), around(updated)
    seen = {(True, False): "creation time", (False, True): "update time", (True, True): "neither alone"}
    what = seen.get((by_created, by_updated), "nothing recognizable")
    return Finding(row, "holds", f"startAt/endAt filter {what} (posync never sends them)")


def check_order(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-ORDER"
    orders = ctx.orders()
    if len(orders) < 3:
        return _none(row, "fewer than three orders")

    def monotone(key: str, reverse: bool) -> bool:
        ts = [_ms(o.get(key)) or 0 for o in orders]
        return ts == sorted(ts, reverse=reverse)

    names = [
        ("updatedAt ascending", monotone("updatedAt", False)),
        ("updatedAt descending", monotone("updatedAt", True)),
        ("createdAt ascending", monotone("createdAt", False)),
        ("createdAt descending", monotone("createdAt", True)),
    ]
    what = next((n for n, ok in names if ok), "no time order")
    return Finding(row, "holds", f"rows come by {what} (posync relies on no order)")


def check_links(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-LINK"
    _, body = ctx.page((("limit", "1"),))
    rows = body.get("orders") if isinstance(body, dict) else None
    links = body.get("links") if isinstance(body, dict) else None
    count = body.get("count") if isinstance(body, dict) else None
    if not rows or (isinstance(count, int) and count <= 1):
        return _none(row, "fewer than two orders")
    rels = sorted({str(x.get("rel")) for x in links or [] if isinstance(x, dict)})
    if rels:
        return Finding(row, "holds", f"a page with more to come carries links with rel {', '.join(rels)}")
    if isinstance(count, int):
        return Finding(row, "holds", "no links; count says more remain")
    return Finding(row, "holds", "no links and no count: posync pages on while pages are full")


def check_limit(ctx: PoyntProbe) -> Finding:
    row = "PNT-LIST-LIMIT"
    _, body = ctx.page()
    rows = body.get("orders") if isinstance(body, dict) else None
    count = body.get("count") if isinstance(body, dict) else None
    links = body.get("links") if isinstance(body, dict) else None
    n = len(rows or [])
    if n >= PAGE:
        return Finding(row, "holds", "limit=100 answered a full page of 100")
    if isinstance(count, int) and count > n and not links:
        return Finding(row, "differs", f"limit=100 answered {n} rows of {count} with no link")
    return Finding(row, "holds", f"limit=100 answered all {n} rows" if n else "no rows")


def check_item_ids(ctx: PoyntProbe) -> Finding:
    row = "PNT-ITEM-ID"
    items = [it for o in ctx.orders() for it in o.get("items") or [] if isinstance(it, dict)]
    if not items:
        return _none(row, "no items in the first page")
    missing = sum(1 for it in items if it.get("id") is None)
    return Finding(row, "holds", f"{missing} of {len(items)} items without id (derived ids for those)")


def check_totals(ctx: PoyntProbe) -> Finding:
    row = "PNT-NET-TOTAL"
    checked = bad = 0
    for o in ctx.orders():
        a = o.get("amounts")
        if not isinstance(a, dict) or not isinstance(a.get("netTotal"), int):
            continue
        if isinstance(a.get("subTotal"), int) and isinstance(a.get("taxTotal"), int):
            checked += 1
            parts = a["subTotal"] + (a.get("discountTotal") or 0) + a["taxTotal"] + (a.get("feeTotal") or 0)
            bad += parts != a["netTotal"]
    if not checked:
        return _none(row, "no order with subTotal, taxTotal and netTotal")
    if bad:
        return Finding(row, "differs", f"{bad} of {checked} orders: netTotal is not the sum of its parts")
    return Finding(
        row, "holds", f"{checked} orders: netTotal = subTotal + discountTotal + taxTotal + feeTotal"
    )


def check_tips(ctx: PoyntProbe) -> Finding:
    row = "PNT-TIP-TOTALS"
    checked = bad = 0
    for o in ctx.orders():
        captured = (o.get("amounts") or {}).get("capturedTotals")
        txs = o.get("transactions")
        if not isinstance(captured, dict) or not isinstance(txs, list):
            continue
        tips = sum(
            int((t.get("amounts") or {}).get("tipAmount") or 0)
            for t in txs
            if isinstance(t, dict) and t.get("action") in ("SALE", "CAPTURE") and t.get("status") != "VOIDED"
        )
        checked += 1
        bad += tips != int(captured.get("tipAmount") or 0)
    if not checked:
        return _none(row, "no paid order with capturedTotals and transactions")
    if bad:
        return Finding(
            row, "differs", f"{bad} of {checked} orders: capturedTotals.tipAmount is not their tips"
        )
    return Finding(
        row, "holds", f"{checked} orders: capturedTotals.tipAmount = the captured transactions' tips"
    )


def _outside(row: str, why: str) -> Callable[[PoyntProbe], Finding]:
    return lambda ctx: _none(row, why)


CHECKS: tuple[Check, ...] = (
    Check(
        "PNT-CONSENT-STATUS",
        "a code without error is an approval",
        _outside("PNT-CONSENT-STATUS", "seen only on the consent redirect"),
    ),
    Check("PNT-CONSENT-BIZ", "the token's poynt.biz is the business", check_business),
    Check("PNT-TIMES", "times are ISO 8601", check_times),
    Check("PNT-LIST-IMS", "If-Modified-Since filters by updatedAt", check_ims),
    Check("PNT-LIST-304", "nothing modified: 304 (or an empty page)", check_304),
    Check("PNT-LIST-WINDOW", "what startAt/endAt filter", check_window),
    Check("PNT-LIST-ORDER", "the order rows come in", check_order),
    Check("PNT-LIST-LINK", "how a page says more follow", check_links),
    Check("PNT-LIST-LIMIT", "limit up to 100 is honoured", check_limit),
    Check("PNT-ITEM-ID", "items may lack an id", check_item_ids),
    Check("PNT-NET-TOTAL", "netTotal is the sum of its parts", check_totals),
    Check("PNT-TIP-TOTALS", "capturedTotals.tipAmount = the tips", check_tips),
    Check(
        "PNT-HOOK-BODY",
        "webhook bodies carry no order",
        _outside("PNT-HOOK-BODY", "needs a delivered webhook"),
    ),
    Check(
        "PNT-HOOK-RETRY",
        "retries after 2 s, same event id",
        _outside("PNT-HOOK-RETRY", "needs a delivered webhook"),
    ),
    Check(
        "PNT-INSTALL-LIST",
        "the billing subscriptions list",
        _outside("PNT-INSTALL-LIST", "needs the app token and the billing host"),
    ),
)
__all__ = ["CHECKS", "context"]
