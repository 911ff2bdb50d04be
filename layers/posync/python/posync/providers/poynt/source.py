"""Poynt orders: ``GET /businesses/{businessId}/orders``, read so that no reading of the docs can fool it.

Poynt documents ``If-Modified-Since`` as filtering "by the item's last updated time"; what
``startAt``/``endAt`` filter is not settled (its Python SDK says creation time: PNT-LIST-WINDOW),
nor the order rows come in (PNT-LIST-ORDER), nor the paging link's ``rel`` (PNT-LIST-LINK). So:

- **Lower bound by If-Modified-Since only**, the run's start floored to the second (an HTTP date
  cannot say milliseconds; flooring never excludes an order) (PNT-LIST-IMS). ``startAt`` and
  ``endAt`` are never sent: read as creation time they would hide older orders changed since.
- **A 304** means nothing changed since the bound: the run is done, the cursor stays
  (PNT-LIST-304).
- **Offset paging that trusts no row order.** Pages of ``limit=100`` by ``startOffset``; each
  request overlaps the previous page by a tenth of a page, and must find one of the previous
  page's last rows (same id *and* ``updatedAt``: an unchanged order) among its rows. An
  unchanged order keeps its place relative to other unchanged orders under any ordering by
  fixed keys, so everything after that anchor is still ahead. If no anchor is found (rows
  shifted by more than the overlap), the request steps back by most of a page until one is,
  or until offset 0, and the overlap doubles (up to half a page) for the rest of the
  invocation. Orders *changed* while being paged have an ``updatedAt`` after the run
  started: the next run reads them. More pages follow while a page is full or carries any
  link (whatever its ``rel``) or its ``count`` says more remain; links are not followed
  (their ``rel`` and form are not confirmed, and the offset is what they encode anyway).
- **The cursor** is just past the greatest ``updatedAt`` seen, but never later than the run's start
  (an order changed during the run may sit behind the pass: it must be read next time); the
  next run reads from it minus the lookback (two minutes by default: second precision, late
  writes, clock skew). A run that saw nothing keeps the cursor where it was.

The headers ``api-version: 1.2`` and ``Poynt-Request-Id`` come from the transport.
"""

from __future__ import annotations

import email.utils
from collections.abc import Generator
from typing import Any

from posync.errors import AuthorizationRevoked, InvalidInput, ProviderError
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, KeysetSource, Page, Plan, Prepare, SourceConfig, iso_to_ms, ms_to_iso
from posync.transport import Transport, iter_json_list

MAX_STEP_BACKS = 50  # per run: rows shifting this often means the list is not stable enough to page


def _anchor(oid: str, t: int) -> str:
    return f"{oid}@{t}"


class PoyntSource(KeysetSource):
    """One business's orders since a time, by If-Modified-Since and anchored offsets (see above).

    Its plan is one slice ``(since, end, anchors, offset)``: ``anchors`` are ``"id@updatedMs"``
    of the last rows of the page before ``offset``.
    """

    provider = "poynt"
    time_key = "updated_at"
    max_window_ms = 100 * 365 * DAY_MS  # one pass, however old the cursor: no window to cut
    max_page_limit = 100

    def __init__(self, transport: Transport, business_id: str, config: SourceConfig | None = None) -> None:
        super().__init__(transport, config)
        self.business_id = business_id
        self.path = f"/businesses/{business_id}/orders"
        self.overlap = max(1, self.page_limit // 10)
        self._start: int | None = None  # the run's lower bound as planned (before flooring)
        self.step_backs = 0
        self._total: int | None = None  # the last reply's ``count``, if it had one

    def encode_time(self, ms: int) -> Any:
        return ms_to_iso(ms)

    def decode_time(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return iso_to_ms(value)

    # ---- plans and cursors

    def plan(self, start_ms: int, end_ms: int) -> Plan:
        self._start = start_ms
        since = start_ms // 1000 * 1000
        return Plan(end=end_ms, slices=((since, max(end_ms, since + 1), (), 0),))

    def resume(self, progress: dict[str, Any]) -> Plan:
        plan = super().resume(progress)
        if len(plan.slices) != 1:
            raise InvalidInput("poynt sync progress must hold one pass")
        self._start = plan.slices[0][0]
        return plan

    def settled_cursor(self, end_ms: int, newest_ms: int | None) -> dict[str, Any]:
        if newest_ms is not None:
            # Every version updated at or before the newest seen (and before the run began) was read.
            position = min(newest_ms + 1, end_ms)
        elif self._start is not None:  # nothing seen: stay (the next run re-applies the lookback)
            position = min(end_ms, self._start + self.config.lookback_ms)
        else:
            position = end_ms
        return super().settled_cursor(position, newest_ms)

    def _progress_of(self, plan: Plan, since: int, anchors: list[str], offset: int) -> dict[str, Any]:
        end = plan.slices[0][1]
        slice_json: dict[str, Any] = {"from": ms_to_iso(since), "to": ms_to_iso(end), "ids": anchors}
        if offset:
            slice_json["offset"] = offset
        return {"end": ms_to_iso(plan.end), "slices": [slice_json]}

    # ---- reading

    def _get(self, since: int, offset: int, deadline: Deadline) -> Any:
        params = [("limit", str(self.page_limit)), ("startOffset", str(offset))]
        headers = {"If-Modified-Since": email.utils.formatdate(since // 1000, usegmt=True)}
        try:
            reply = self.transport.get(self.path, params, headers=headers, deadline=deadline, parse=False)
        except ProviderError as exc:
            if exc.status == 403 and self.transport.conn.auth == "app_installed":
                # The app token may no longer read the business: the app left its terminal.
                raise AuthorizationRevoked(
                    "the app is no longer installed on the business's terminal"
                ) from exc
            raise
        self._count()
        return reply

    def _parse(
        self, reply: Any, yielded: set[str], prepare: Prepare | None
    ) -> tuple[list[Any], list[str], int | None, int, bool]:
        """Parse a page one order at a time, preparing each new one as it is parsed.

        Returns (new orders, "id@updatedMs" per row with a valid time, newest ms, rows, link?).
        A row already yielded at the same version is skipped; a malformed ``updatedAt`` is kept
        (quarantined downstream) and is never an anchor.
        """
        rest: dict[str, Any] = {}
        new: list[Any] = []
        keys: list[str] = []
        newest: int | None = None
        n = 0
        for order in iter_json_list(
            reply.body, "orders", what="Poynt orders", status=reply.status, rest=rest, required=False
        ):
            n += 1
            if not isinstance(order, dict):
                raise ProviderError("Poynt orders: a row is not an object")
            oid = order.get("id")
            try:
                t: int | None = iso_to_ms(order.get("updatedAt"))  # type: ignore[arg-type]
            except InvalidInput:
                t = None
            if t is not None and isinstance(oid, str) and oid:
                newest = t if newest is None else max(newest, t)
                key = _anchor(oid, t)
                keys.append(key)
                if key in yielded:
                    continue
                yielded.add(key)
            new.append(order if prepare is None else prepare(order))
            del order
        links = rest.get("links")
        has_link = isinstance(links, list) and any(isinstance(x, dict) and x.get("href") for x in links)
        total = rest.get("count")
        self._total = total if isinstance(total, int) and not isinstance(total, bool) else None
        return new, keys, newest, n, has_link

    def pages(
        self, plan: Plan, deadline: Deadline, prepare: Prepare | None = None
    ) -> Generator[Page, None, None]:
        """The pass, one page at a time (sequential: each request depends on the last page)."""
        if plan.done:
            yield Page([], None, None, 0)
            return
        since, _, anchor_ids, offset = plan.slices[0]
        anchors = set(anchor_ids)
        yielded: set[str] = set()  # "id@updatedMs" already handed out by this invocation
        while True:
            reply = self._get(since, offset, deadline)
            if reply.status == 304:
                yield Page([], None, None, 0)
                return
            with self._cpu:
                new, keys, newest, n, has_link = self._parse(reply, yielded, prepare)
                del reply
            anchored = offset == 0 or not anchors or any(k in anchors for k in keys)
            if not anchored:
                # Rows shifted by more than the overlap: step back until a known row is found.
                self.step_backs += 1
                if self.step_backs > MAX_STEP_BACKS:
                    raise ProviderError("Poynt orders kept shifting while being paged; the run will retry")
                offset = max(0, offset - (self.page_limit - self.overlap))
                self.overlap = min(
                    self.page_limit // 2, 2 * self.overlap
                )  # rows move this fast: overlap more
                yield Page(new, self._progress_of(plan, since, sorted(anchors), offset), newest, n)
                continue
            more = n > 0 and (
                n >= self.page_limit or has_link or (self._total is not None and offset + n < self._total)
            )
            if not more:
                yield Page(new, None, newest, n)
                return
            keep = min(self.overlap, n - 1)
            anchors = set(keys[len(keys) - keep - 1 :]) if keys and keep else set()
            offset += n - keep
            yield Page(new, self._progress_of(plan, since, sorted(anchors), offset), newest, n)
