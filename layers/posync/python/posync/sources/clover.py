"""Clover orders: ``GET /v3/merchants/{mId}/orders`` read by keyset (see ``posync.sources``).

Every list request carries both bounds of its slice (``filter=modifiedTime>=T`` and
``filter=modifiedTime<U``, never wider than 90 days: Clover silently cuts a wider range to
its latest 90 days), ``orderBy=modifiedTime ASC``, ``limit=1000`` (the maximum) and
``offset=0`` (except inside a tie bigger than a page).

**Expansions.** Clover expands at most three fields per call, and an un-expanded list comes
back as an ``href`` only. A complete order needs six (line items, payments, refunds, and the
order-level discounts, service charge and credits that its totals depend on), so each page
is read twice with the same filter: ``expand=lineItems,payments,refunds`` and then
``expand=discounts,serviceCharge,credits``, merged by order id and modified time. Both are
downloaded before either is parsed (see ``posync.sources``: parsing waits for a CPU slot);
the second read is skipped when the first, small enough to parse at once, holds no order
the slice wants (an empty page, or only ids already seen). A row the
second read does not show at the same version is fetched by id
(``/orders/{id}?expand=discounts,serviceCharge,credits``); if its version changed in the
meantime it is skipped here: its newer version has a later modified time and is read there
(or by the next run). A list the order does not have stays absent, as Clover sends it.

Expanded nested lists stop at 100 items. An order whose line items, payments, refunds or
discounts reach 100 is completed from ``/orders/{id}/line_items`` (with the line items' own
discounts, modifications and tax rates expanded), ``/payments``, ``/refunds`` and
``/discounts`` (``limit=1000``, the documented maximum, paged until a page comes back
shorter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posync.errors import ProviderError
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, KeysetSource, SliceView, SourceConfig
from posync.transport import Transport, parse_json

PARSE_AT_ONCE_BYTES = 32_768  # a first read this small is parsed at download (a dozen orders at most)
NESTED_CUT = 100
NESTED_LIMIT = 1000
MAX_NESTED_PAGES = 100
EXPAND = "lineItems,payments,refunds"
EXPAND_ORDER_LEVEL = "discounts,serviceCharge,credits"
ORDER_LEVEL = ("discounts", "serviceCharge", "credits")
LINE_ITEM_EXPAND = "discounts,modifications,taxRates"
NESTED = (  # (field, path under the order, expand): the lists completed when cut at 100
    ("lineItems", "line_items", LINE_ITEM_EXPAND),
    ("payments", "payments", None),
    ("refunds", "refunds", None),
    ("discounts", "discounts", None),
)


class CloverSource(KeysetSource):
    provider = "clover"
    time_key = "modified_ms"
    max_window_ms = 90 * DAY_MS
    max_page_limit = 1000

    def __init__(self, transport: Transport, merchant_id: str, config: SourceConfig | None = None) -> None:
        super().__init__(transport, config)
        self.merchant_id = merchant_id
        self.base = f"/v3/merchants/{merchant_id}"

    def _list(self, view: SliceView, limit: int, expand: str, deadline: Deadline) -> bytes:
        params = [
            ("filter", f"modifiedTime>={view.start}"),
            ("filter", f"modifiedTime<{view.end}"),
            ("orderBy", "modifiedTime ASC"),
            ("expand", expand),
            ("limit", str(limit)),
            ("offset", str(view.offset)),
        ]
        reply = self.transport.get(f"{self.base}/orders", params, deadline=deadline, parse=False)
        self._count()
        body: bytes = reply.body
        return body

    def download(self, view: SliceView, limit: int, deadline: Deadline) -> Downloaded:
        first: bytes | list[Any] = self._list(view, limit, EXPAND, deadline)
        if len(first) <= PARSE_AT_ONCE_BYTES:
            first = _elements(first)  # small: whether the slice wants any of it decides the second read
            if not _wanted(view, first):
                return Downloaded(first, None)
        return Downloaded(first, self._list(view, limit, EXPAND_ORDER_LEVEL, deadline))

    def build(self, view: SliceView, downloaded: Downloaded, limit: int, deadline: Deadline) -> Fetched:
        elements = _elements(downloaded.first)
        orders: list[dict[str, Any]] = [o for o in elements if isinstance(o, dict)]
        keys = [_key(o, view.start) for o in orders]
        wanted = _wanted(view, orders, keys)
        stale: set[str] = set()
        pending: list[int] = []
        if wanted:
            # download() read the second list whenever a row could be wanted
            second = {
                (o.get("id"), o.get("modifiedTime")): o
                for o in _elements(downloaded.second or b"")
                if isinstance(o, dict)
            }
            for i, t, oid, order in wanted:
                extra = second.get((oid, t)) or self._order_level(oid, deadline)
                if extra is None or extra.get("modifiedTime") != t:
                    stale.add(oid)
                    continue
                for name in ORDER_LEVEL:
                    if name in extra:
                        order[name] = extra[name]
                    else:
                        order.pop(name, None)
                if any(_cut(order.get(name)) for name, _, _ in NESTED):
                    pending.append(i)  # completed by complete(), outside the CPU slot
        more = len(elements) >= limit
        return Fetched(orders, keys, more, stale=frozenset(stale), pending=tuple(pending))

    def _order_level(self, oid: str, deadline: Deadline) -> dict[str, Any] | None:
        """One order's order-level lists (the second page read did not show this version)."""
        try:
            reply = self.transport.get(
                f"{self.base}/orders/{oid}", {"expand": EXPAND_ORDER_LEVEL}, deadline=deadline
            )
        except ProviderError as exc:
            if exc.status == 404:  # deleted in the meantime: nothing to export for this version
                return None
            raise
        self._count()
        return reply.body if isinstance(reply.body, dict) else None

    def complete(self, order: dict[str, Any], deadline: Deadline) -> None:
        """Replace nested lists cut at 100 with the full lists."""
        oid = order.get("id")
        if not isinstance(oid, str) or not oid.isalnum():
            return  # malformed: the normalizer quarantines it
        for field_name, path, expand in NESTED:
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


@dataclass(frozen=True)
class Downloaded:
    """A page's two list reads: the first (bytes, or parsed if small), the second's bytes (None: not read)."""

    first: bytes | list[Any]
    second: bytes | None


def _elements(body: bytes | list[Any]) -> list[Any]:
    if isinstance(body, list):
        return body
    reply = parse_json(body)
    elements = reply.get("elements", []) if isinstance(reply, dict) else None
    if not isinstance(elements, list):
        raise ProviderError("Clover orders reply without an elements list")
    return elements


def _wanted(
    view: SliceView, orders: list[Any], keys: list[tuple[int, str]] | None = None
) -> list[tuple[int, int, str, dict[str, Any]]]:
    """The rows new to the slice, as (index among the dict rows, modified ms, id, order)."""
    rows = [o for o in orders if isinstance(o, dict)]
    if keys is None:
        keys = [_key(o, view.start) for o in rows]
    pairs = enumerate(zip(keys, rows, strict=True))
    return [(i, t, oid, o) for i, ((t, oid), o) in pairs if view.wants(t, oid) and oid.isalnum()]


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
