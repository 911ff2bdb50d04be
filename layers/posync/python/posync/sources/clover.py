"""Clover orders: ``GET /v3/merchants/{mId}/orders`` read by keyset (see ``posync.sources``).

Every list request carries both bounds of its slice (``filter=modifiedTime>=T`` and
``filter=modifiedTime<U``, never wider than 90 days: Clover silently cuts a wider range to
its latest 90 days), ``orderBy=modifiedTime ASC``, ``limit=1000`` (the maximum),
``offset=0`` (except inside a tie bigger than a page) and
``expand=lineItems,payments,refunds`` (Clover takes at most three expansions).

Expanded nested lists stop at 100 items. An order whose line items, payments or refunds
reach 100 is completed from ``/orders/{id}/line_items`` (with the line items' own
discounts, modifications and tax rates expanded), ``/payments`` and ``/refunds``
(``limit=1000``, the documented maximum, paged until a page comes back shorter).
"""

from __future__ import annotations

from typing import Any

from posync.errors import ProviderError
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, KeysetSource, SliceView, SourceConfig
from posync.transport import Transport

NESTED_CUT = 100
NESTED_LIMIT = 1000
MAX_NESTED_PAGES = 100
EXPAND = "lineItems,payments,refunds"
LINE_ITEM_EXPAND = "discounts,modifications,taxRates"


class CloverSource(KeysetSource):
    provider = "clover"
    time_key = "modified_ms"
    max_window_ms = 90 * DAY_MS
    max_page_limit = 1000

    def __init__(self, transport: Transport, merchant_id: str, config: SourceConfig | None = None) -> None:
        super().__init__(transport, config)
        self.merchant_id = merchant_id
        self.base = f"/v3/merchants/{merchant_id}"

    def fetch(self, view: SliceView, limit: int, deadline: Deadline) -> Fetched:
        params = [
            ("filter", f"modifiedTime>={view.start}"),
            ("filter", f"modifiedTime<{view.end}"),
            ("orderBy", "modifiedTime ASC"),
            ("expand", EXPAND),
            ("limit", str(limit)),
            ("offset", str(view.offset)),
        ]
        reply = self.transport.get(f"{self.base}/orders", params, deadline=deadline)
        self._count()
        elements = reply.body.get("elements", []) if isinstance(reply.body, dict) else None
        if not isinstance(elements, list):
            raise ProviderError("Clover orders reply without an elements list", status=reply.status)
        orders: list[dict[str, Any]] = [o for o in elements if isinstance(o, dict)]
        keys = [_key(o, view.start) for o in orders]
        for (t, oid), order in zip(keys, orders, strict=True):
            if view.wants(t, oid):
                self._complete(order, deadline)
        return Fetched(orders=orders, keys=keys, more=len(elements) >= limit)

    def _complete(self, order: dict[str, Any], deadline: Deadline) -> None:
        """Replace nested lists cut at 100 with the full lists."""
        oid = order.get("id")
        if not isinstance(oid, str) or not oid.isalnum():
            return  # malformed: the normalizer quarantines it
        for field_name, path, expand in (
            ("lineItems", "line_items", LINE_ITEM_EXPAND),
            ("payments", "payments", None),
            ("refunds", "refunds", None),
        ):
            if _cut(order.get(field_name)):
                order[field_name] = {
                    "elements": self._all(f"{self.base}/orders/{oid}/{path}", expand, deadline)
                }

    def _all(self, path: str, expand: str | None, deadline: Deadline) -> list[Any]:
        out: list[Any] = []
        for _ in range(MAX_NESTED_PAGES):
            params: dict[str, Any] = {"limit": NESTED_LIMIT, "offset": len(out)}
            if expand:
                params["expand"] = expand
            reply = self.transport.get(path, params, deadline=deadline)
            self._count()
            body = reply.body if isinstance(reply.body, dict) else {}
            elements = body.get("elements", [])
            if not isinstance(elements, list):
                raise ProviderError("Clover nested list reply without elements", status=reply.status)
            out.extend(elements)
            if len(elements) < NESTED_LIMIT:  # Clover honours limits up to 1000 on every v3 list
                return out
        raise ProviderError(f"nested list longer than {MAX_NESTED_PAGES} pages")


def _cut(nested: Any) -> bool:
    if not isinstance(nested, dict):
        return False
    elements = nested.get("elements")
    return isinstance(elements, list) and len(elements) >= NESTED_CUT


def _key(order: dict[str, Any], fallback: int) -> tuple[int, str]:
    """(modifiedTime, id); a malformed order keys at the slice start and is quarantined downstream."""
    t = order.get("modifiedTime")
    oid = order.get("id")
    if isinstance(t, bool) or not isinstance(t, int):
        t = fallback
    return t, oid if isinstance(oid, str) else ""
