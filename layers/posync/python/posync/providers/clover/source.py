"""Clover orders: ``GET /v3/merchants/{mId}/orders`` read by keyset (see ``posync.sources``).

Register rows relied on (``docs/provider-contracts.md``): CLV-LIST-1, CLV-LIST-3 (filters,
order, limit, the 90-day cut), CLV-EXPAND-1 to CLV-EXPAND-5 (explicit expansion, three per
call, dotted paths), CLV-NESTED-1 (nested lists cut at 100), CLV-MISSING-1.

Every list request carries both bounds of its slice (``filter=modifiedTime>=T`` and
``filter=modifiedTime<U``, never wider than 90 days: Clover silently cuts a wider range to
its latest 90 days), ``orderBy=modifiedTime ASC``, ``limit=1000`` (the maximum) and
``offset=0`` (except inside a tie bigger than a page).

**Expansions.** Clover expands at most three fields per call, dotted paths included, and a
collection not named is absent. A complete order needs nine: the order-level
``discounts``, ``serviceCharge`` (the definition) and ``credits``; ``payments`` with each
payment's ``tender`` and ``cardTransaction``, and ``refunds``; ``lineItems`` with each
line's ``modifications``, ``discounts`` and ``taxRates`` (a dotted path expands its parent
too). So each page is read three times with the same filter, the smallest first (what a
fetch holds while the next request waits for the rate limit):

1. ``discounts,serviceCharge,credits`` (``LEVEL``; when small and holding no order the slice
   wants, the page ends here);
2. ``payments.tender,payments.cardTransaction,refunds`` (``PAYMENTS``);
3. ``lineItems.modifications,lineItems.discounts,lineItems.taxRates`` (``LINES``: the page's
   rows, parsed one order at a time, each merged with its parts of 1 and 2 by id and
   modified time and prepared as soon as it is parsed).

Three requests per 1,000 orders is the floor: nine expansions at three a call. A row the
other reads do not show at the same version is read by id with the missing part's
expansion (``/orders/{id}?expand=...``); if its version changed in the meantime it is
skipped here: its newer version has a later modified time and is read there (or by the
next run). A collection that was asked for but is missing where the order's own fields say
it must exist (``normalizer.missing``: payments on a paid order, refunds on a refunded
one, line items on an order with a total) is read again by id; if still missing, the
normalizer quarantines the order with the reason. Never an empty list in its place.

Expanded nested lists stop at 100 items. An order whose line items, payments, refunds or
discounts reach 100 is completed from ``/orders/{id}/line_items`` (with the line items'
``modifications,discounts,taxRates``), ``/payments`` (with ``tender,cardTransaction``),
``/refunds`` and ``/discounts`` (``limit=1000``, the documented maximum, paged until a page
comes back shorter).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from posync.errors import ProviderError
from posync.providers.clover.normalizer import missing
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, KeysetSource, Prepare, Rows, SliceView, SourceConfig
from posync.transport import Transport, iter_json_list

PARSE_AT_ONCE_BYTES = 32_768  # an order-level read this small is parsed at download (some 40 orders)
NESTED_CUT = 100
NESTED_LIMIT = 1000
MAX_NESTED_PAGES = 100
LEVEL = "discounts,serviceCharge,credits"
PAYMENTS = "payments.tender,payments.cardTransaction,refunds"
LINES = "lineItems.modifications,lineItems.discounts,lineItems.taxRates"
EXPAND_ORDER_LEVEL = LEVEL  # the first read (kept for callers that name it)
EXPAND = LINES  # the read whose rows make the page
# (expand, the fields it brings): every part of a complete order is brought by one read.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (LEVEL, ("discounts", "serviceCharge", "credits")),
    (PAYMENTS, ("payments", "refunds")),
    (LINES, ("lineItems",)),
)
FIELDS_OF = dict(PARTS)
LINE_ITEM_EXPAND = "modifications,discounts,taxRates"
PAYMENT_EXPAND = "tender,cardTransaction"
NESTED: tuple[tuple[str, str, str | None], ...] = (  # (field, path, expand): completed when cut at 100
    ("lineItems", "line_items", LINE_ITEM_EXPAND),
    ("payments", "payments", PAYMENT_EXPAND),
    ("refunds", "refunds", None),
    ("discounts", "discounts", None),
)

Part = dict[str, Any]  # the fields one read brings for one order (absent ones left out)


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
        # Smallest first: it is what the fetch holds while its next request waits for the rate limit.
        level: bytes | list[Any] = self._list(view, limit, LEVEL, deadline)
        if len(level) <= PARSE_AT_ONCE_BYTES:
            level = list(_elements(level))  # small: whether the slice wants any of it decides the rest
            if not _wanted(view, level):
                return Downloaded(level, None, None)  # the page is these rows (nothing in it is read further)
        payments = self._list(view, limit, PAYMENTS, deadline)
        return Downloaded(self._list(view, limit, LINES, deadline), level, payments)

    def build(
        self, view: SliceView, downloaded: Downloaded, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> Fetched:
        # The other reads' parts of the rows the slice wants, by (id, modified time): parsed
        # first (the rows' read is then prepared as it is parsed), the rest of each row dropped.
        level = _parts(view, downloaded.take("second"), FIELDS_OF[LEVEL])
        payments = _parts(view, downloaded.take("third"), FIELDS_OF[PAYMENTS])
        # The rows are the line items read; or, when download() stopped after the order-level
        # read (nothing in it wanted), that read: any row wanted after all gets the rest by id.
        others: tuple[tuple[str, dict[tuple[str, int], Part] | None], ...] = (
            ((LEVEL, level), (PAYMENTS, payments)) if level is not None else ((PAYMENTS, None), (LINES, None))
        )
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
            stale = False
            for expand, found in others:
                part = found.get((oid, t)) if found is not None else None
                if part is None:  # the list reads did not show this version: read it by id
                    part = self._part(oid, expand, t, deadline)
                if part is None:  # its version changed while being read: its newer one is read later
                    stale = True
                    break
                _merge(order, part, FIELDS_OF[expand])
            if stale:
                rows.add(order, key, stale=True)
                continue
            # Nested lists cut at 100, and collections missing where they must exist: finished
            # by complete(), outside the CPU slot.
            pending = any(_cut(order.get(name)) for name, _, _ in NESTED) or bool(missing(order))
            rows.add(order, key, pending=pending)
        return rows.fetched(more=count >= limit)

    def _part(self, oid: str, expand: str, version: int | None, deadline: Deadline) -> Part | None:
        """One order's fields of one read, by id; None if the order is gone or (``version``
        given) at another version."""
        try:
            reply = self.transport.get(f"{self.base}/orders/{oid}", {"expand": expand}, deadline=deadline)
        except ProviderError as exc:
            if exc.status == 404:  # deleted in the meantime: nothing to export for this version
                return None
            raise
        self._count()
        body = reply.body if isinstance(reply.body, dict) else None
        if body is None or (version is not None and body.get("modifiedTime") != version):
            return None
        return {name: body[name] for name in FIELDS_OF[expand] if name in body}

    def complete(self, order: dict[str, Any], deadline: Deadline) -> None:
        """Re-read collections missing where they must exist, then replace nested lists cut at
        100 with the full lists."""
        oid = order.get("id")
        if not isinstance(oid, str) or not oid.isalnum():
            return  # malformed: the normalizer quarantines it
        gaps = missing(order)
        if gaps:
            t = order.get("modifiedTime")
            for read, fields in PARTS:
                if any(gap in fields for gap in gaps):
                    part = self._part(oid, read, t if isinstance(t, int) else None, deadline)
                    if part is not None:
                        _merge(order, part, fields)
            # still missing: the normalizer quarantines the order, naming the collection
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
    """A page's list reads, each bytes or, if small, parsed: ``first`` (its rows: the line
    items read; or, when nothing in the page is wanted, the order-level read), ``second``
    (the order-level read) and ``third`` (the payments read); None: not needed.

    :meth:`CloverSource.build` takes each body out as it parses it, so that a body's bytes
    are freed as soon as they are decoded to text.
    """

    first: bytes | list[Any] | None
    second: bytes | list[Any] | None
    third: bytes | list[Any] | None = None

    def take(self, name: str) -> bytes | list[Any] | None:
        body: bytes | list[Any] | None = getattr(self, name)
        setattr(self, name, None)
        return body

    def take_first(self) -> bytes | list[Any]:
        body = self.take("first")
        if body is None:
            raise ValueError("this page's first read was taken already")
        return body

    def take_second(self) -> bytes | list[Any] | None:
        return self.take("second")


def _parts(
    view: SliceView, body: bytes | list[Any] | None, fields: tuple[str, ...]
) -> dict[tuple[str, int], Part] | None:
    """A list read's parts (``fields``) of the rows the slice wants, by (id, modified time)."""
    if body is None:
        return None
    out: dict[tuple[str, int], Part] = {}
    for o in _elements(body):
        if isinstance(o, dict):
            t, oid = _key(o, -1)
            if view.wants(t, oid):
                out[(oid, t)] = {name: o[name] for name in fields if name in o}
    return out


def _merge(order: dict[str, Any], part: Part, fields: tuple[str, ...]) -> None:
    """Put one read's fields on the order: those it brought, and none it did not."""
    for name in fields:
        if name in part:
            order[name] = part[name]
        else:
            order.pop(name, None)


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
