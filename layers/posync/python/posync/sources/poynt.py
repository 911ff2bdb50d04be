"""Poynt orders: ``GET /businesses/{businessId}/orders`` read by keyset (see ``posync.sources``).

Each request carries its slice as ``startAt``/``endAt`` (ISO 8601 UTC with milliseconds,
on ``updatedAt``), ``limit=100`` (the maximum), ``startOffset=0`` (except inside a tie
bigger than a page) and ``If-Modified-Since`` (the slice start, floored to the second:
an HTTP date cannot say milliseconds, and flooring never excludes an order). The headers
``api-version: 1.2`` and ``POYNT-REQUEST-ID`` come from the transport.

``links`` (``rel: next``) are followed in the sense that matters: a next link says more
rows follow, and the next request goes to the link's path with its query parameters, but
with the keyset's ``startAt`` and ``startOffset`` instead of the link's offset, which a
moving window would make skip orders. A link must point at this business's orders on the
configured API host; anything else is ignored.

``startAt`` is sent one millisecond early and rows before the slice are dropped, so the
slice is read correctly whether Poynt treats ``startAt`` as inclusive or exclusive; rows
at or after ``endAt`` are dropped likewise.
"""

from __future__ import annotations

import email.utils
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from posync.errors import InvalidInput
from posync.ratelimit import Deadline
from posync.sources import (
    DAY_MS,
    Fetched,
    KeysetSource,
    Prepare,
    Rows,
    SliceView,
    SourceConfig,
    iso_to_ms,
    ms_to_iso,
)
from posync.transport import Reply, Transport, iter_json_list

KEYSET_PARAMS = frozenset({"startAt", "endAt", "startOffset", "limit"})


class PoyntSource(KeysetSource):
    provider = "poynt"
    time_key = "updated_at"
    max_window_ms = 90 * DAY_MS
    max_page_limit = 100

    def __init__(self, transport: Transport, business_id: str, config: SourceConfig | None = None) -> None:
        super().__init__(transport, config)
        self.business_id = business_id
        self.path = f"/businesses/{business_id}/orders"

    def encode_time(self, ms: int) -> Any:
        return ms_to_iso(ms)

    def decode_time(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return iso_to_ms(value)

    def _link_params(self, link: str | None) -> list[tuple[str, str]]:
        if not link:
            return []
        parts = urlsplit(link)
        if parts.path != self.path:
            return []
        if parts.netloc:
            api = urlsplit(self.transport.api_base)
            if (parts.scheme, parts.netloc) != (api.scheme, api.netloc):
                return []
        return [(k, v) for k, v in parse_qsl(parts.query) if k not in KEYSET_PARAMS]

    def download(self, view: SliceView, limit: int, deadline: Deadline) -> Reply:
        start = view.start - 1
        params = [
            *self._link_params(view.link),
            ("startAt", ms_to_iso(start)),
            ("endAt", ms_to_iso(view.end)),
            ("limit", str(limit)),
            ("startOffset", str(view.offset)),
        ]
        headers = {"If-Modified-Since": email.utils.formatdate(start // 1000, usegmt=True)}
        reply = self.transport.get(self.path, params, headers=headers, deadline=deadline, parse=False)
        self._count()
        return reply

    def build(
        self, view: SliceView, downloaded: Reply, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> Fetched:
        if downloaded.status == 304:
            return Fetched(orders=[], keys=[], more=False)
        rows = Rows(view, prepare)
        rest: dict[str, Any] = {}
        count = 0
        for order in iter_json_list(
            downloaded.body,
            "orders",
            what="Poynt orders",
            status=downloaded.status,
            rest=rest,
            required=False,
        ):
            count += 1
            if isinstance(order, dict):
                rows.add(order, _key(order, view.start))
        link = None
        links = rest.get("links")
        if isinstance(links, list):
            for item in links:
                if isinstance(item, dict) and item.get("rel") == "next" and isinstance(item.get("href"), str):
                    link = item["href"]
        return rows.fetched(more=link is not None and count > 0, link=link)


def _key(order: dict[str, Any], fallback: int) -> tuple[int, str]:
    oid = order.get("id")
    try:
        t = iso_to_ms(order.get("updatedAt"))  # type: ignore[arg-type]
    except InvalidInput:
        t = fallback  # malformed: quarantined downstream
    return t, oid if isinstance(oid, str) else ""
