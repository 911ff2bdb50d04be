"""Clover orders: ``GET /v3/merchants/{mId}/orders`` read by keyset (see ``posync.sources``).

Every list request carries both bounds of its slice (``filter=modifiedTime>=T`` and
``filter=modifiedTime<U``, never wider than 90 days: Clover silently cuts a wider range to
its latest 90 days), ``orderBy=modifiedTime ASC``, ``limit=1000`` (the maximum) and
``offset=0`` (except inside a tie bigger than a page).

**Expansions.** Clover expands at most three fields per call, and an un-expanded list comes
back as an ``href`` only. A complete order needs six (line items, payments, refunds, and the
order-level discounts, service charge and credits that its totals depend on), so each page
is read twice with the same filter: ``expand=discounts,serviceCharge,credits`` (about a
quarter of the size) and then ``expand=lineItems,payments,refunds`` (the page's rows),
merged by order id and modified time. The small read goes first, so a fetch waiting for
the rate limit to send its second request holds the small body, not the big one. Both are
downloaded before either is parsed (see ``posync.sources``: parsing waits for a CPU slot),
and each is parsed one order at a time (``posync.transport.iter_json_list``), the small
one first: each order of the big one is merged and normalized as soon as it is parsed.
The big read is skipped when the small one, small enough to parse at once, holds no order
the slice wants (an empty page, or only ids already seen). A row the
order-level read does not show at the same version is fetched by id
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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from posync.errors import ProviderError
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, KeysetSource, Prepare, Rows, SliceView, SourceConfig
from posync.transport import Transport, iter_json_list

PARSE_AT_ONCE_BYTES = 32_768  # an order-level read this small is parsed at download (some 40 orders)
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
        # The order-level read first: it is about a quarter of the other's size, and it is
        # what the fetch holds while its second request waits for the rate limit.
        level: bytes | list[Any] = self._list(view, limit, EXPAND_ORDER_LEVEL, deadline)
        if len(level) <= PARSE_AT_ONCE_BYTES:
            level = list(_elements(level))  # small: whether the slice wants any of it decides the other read
            if not _wanted(view, level):
                return Downloaded(level, None)  # the page is these rows (nothing in it is read further)
        return Downloaded(self._list(view, limit, EXPAND, deadline), level)

    def build(
        self, view: SliceView, downloaded: Downloaded, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> Fetched:
        # The order-level lists of the rows the slice wants, by (id, modified time): parsed
        # first (the big read's orders are then prepared as they are parsed), the rest of
        # each of its rows dropped at once.
        second: dict[tuple[str, int], dict[str, Any]] = {}
        if downloaded.second is not None:
            for o in _elements(downloaded.take_second() or b""):
                if isinstance(o, dict):
                    t, oid = _key(o, -1)
                    if view.wants(t, oid):
                        second[(oid, t)] = {name: o[name] for name in ORDER_LEVEL if name in o}
        rows = Rows(view, prepare)
        count = 0
        for order in _elements(downloaded.take_first()):
            count += 1
            if not isinstance(order, dict):
                continue
            key = t, oid = _key(order, view.start)
            if not (view.wants(t, oid) and oid.isalnum()):
                rows.add(order, key)  # not wanted (None), or malformed (quarantined by prepare)
                continue
            extra = second.get((oid, t))
            if extra is None:  # download() read the order-level list whenever a row could be wanted
                extra = self._order_level(oid, deadline)
                if extra is not None and extra.get("modifiedTime") != t:
                    extra = None
            if extra is None:  # its version changed while being read: its newer one is read later
                rows.add(order, key, stale=True)
                continue
            for name in ORDER_LEVEL:
                if name in extra:
                    order[name] = extra[name]
                else:
                    order.pop(name, None)
            # Nested lists cut at 100: completed by complete(), outside the CPU slot.
            rows.add(order, key, pending=any(_cut(order.get(name)) for name, _, _ in NESTED))
        return rows.fetched(more=count >= limit)

    def _order_level(self, oid: str, deadline: Deadline) -> dict[str, Any] | None:
        """One order's order-level lists (the order-level page read did not show this version)."""
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


@dataclass
class Downloaded:
    """A page's two list reads: ``first`` (its rows: line items, payments and refunds expanded;
    or, when nothing in the page is wanted, the order-level read) and ``second`` (the
    order-level read; None: not needed), each bytes or, if small, parsed.

    :meth:`CloverSource.build` takes each body out as it parses it, so that a body's bytes
    are freed as soon as they are decoded to text.
    """

    first: bytes | list[Any] | None
    second: bytes | list[Any] | None

    def take_first(self) -> bytes | list[Any]:
        body, self.first = self.first, None
        if body is None:
            raise ValueError("this page's first read was taken already")
        return body

    def take_second(self) -> bytes | list[Any] | None:
        body, self.second = self.second, None
        return body


def _elements(body: bytes | list[Any]) -> Iterable[Any]:
    """A list read's orders, parsed one at a time (already parsed if small, see download())."""
    if isinstance(body, list):
        return body
    return iter_json_list(body, "elements", what="Clover orders")


def _wanted(view: SliceView, orders: list[Any]) -> bool:
    """Does the slice want any of these rows (inside it, not seen, a well-formed id)?"""
    for o in orders:
        if isinstance(o, dict):
            t, oid = _key(o, view.start)
            if view.wants(t, oid) and oid.isalnum():
                return True
    return False


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
