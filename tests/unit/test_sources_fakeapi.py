"""In-memory Clover and Poynt order APIs behind a fake :class:`posync.transport.Http` (no network).

They follow the provider facts the sources depend on (filters, ascending order with ties
broken by id, limit caps, Clover's silent 90-day cut and nested cut at 100, Poynt's links)
and add an adversary: ``modify_per_page`` orders inside the request's window are modified
("now") after each page is served, anywhere in the window, seen or not. The tests at the
bottom check the fakes themselves (a naive offset pager does lose orders here).
"""

from __future__ import annotations

import bisect
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from urllib3 import HTTPHeaderDict

from posync.domain import Connection
from posync.providers.clover.source import CloverSource
from posync.providers.poynt.source import PoyntSource
from posync.ratelimit import Deadline, RequestLimiter, TokenLimiter
from posync.sources import DAY_MS, SourceConfig, iso_to_ms, ms_to_iso
from posync.transport import Http, HttpReply, Transport

CLOVER_MID = "MERCHANT00001"
POYNT_BIZ = "2f4a3a1e-3b4c-4d5e-8f90-1234567890ab"
NOW_MS = 1_790_000_000_000  # "now" when a fake API is built


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> HttpReply:
    """A JSON reply as :class:`~posync.transport.PooledHttp` gives it (case-insensitive headers)."""
    all_headers = HTTPHeaderDict({"Content-Type": "application/json", **(headers or {})})
    return HttpReply(status, all_headers, json.dumps(body).encode())


class FakeOrders:
    """Orders with a modification time, ordered by (time, id); thread-safe; a moving clock."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.now_ms = NOW_MS
        self.orders: dict[str, dict[str, Any]] = {}
        self.times: dict[str, int] = {}
        self.index: list[tuple[int, str]] = []
        self.modify_per_page = 0
        self.modified_during_paging: list[str] = []
        self.latency_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._n = 0

    def new_id(self) -> str:
        raise NotImplementedError

    def make(self, oid: str, t: int) -> dict[str, Any]:
        raise NotImplementedError

    def set_time(self, order: dict[str, Any], t: int) -> None:
        raise NotImplementedError

    def add(self, t: int, oid: str | None = None, **extra: Any) -> str:
        with self.lock:
            oid = oid or self.new_id()
            order = self.make(oid, t)
            order.update(extra)
            self.orders[oid] = order
            self.times[oid] = t
            bisect.insort(self.index, (t, oid))
            return oid

    def add_spread(self, n: int, days: float, ties_every: int = 7) -> list[str]:
        """n orders over the last ``days`` days; every ``ties_every``-th shares its neighbour's ms."""
        ids = []
        span = int(days * DAY_MS)
        t = self.now_ms - span
        for i in range(n):
            if i % ties_every != 0:
                t += self.rng.randint(1, max(1, 2 * span // max(1, n)))
            ids.append(self.add(min(t, self.now_ms - 1)))
        return ids

    def modify(self, oid: str) -> None:
        with self.lock:
            self.now_ms += 1
            old = self.times[oid]
            self.index.remove((old, oid))
            self.times[oid] = self.now_ms
            bisect.insort(self.index, (self.now_ms, oid))
            self.set_time(self.orders[oid], self.now_ms)

    def select(self, lo: int | None, hi: int | None) -> list[tuple[int, str]]:
        """(t, id) with lo <= t < hi, ascending."""
        a = 0 if lo is None else bisect.bisect_left(self.index, (lo, ""))
        b = len(self.index) if hi is None else bisect.bisect_left(self.index, (hi, ""))
        return self.index[a:b]

    def after_page(self, window: list[tuple[int, str]]) -> None:
        for _ in range(self.modify_per_page):
            live = [oid for t, oid in window if self.times.get(oid) == t]
            if not live:
                return
            oid = self.rng.choice(live)
            self.modify(oid)
            self.modified_during_paging.append(oid)

    def serve(self, path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> HttpReply:
        raise NotImplementedError

    def session(self) -> Http:
        api = self

        class Session:
            def get(self, url: str, **kwargs: Any) -> HttpReply:
                raw = kwargs.get("params") or []
                params = list(raw.items()) if isinstance(raw, dict) else list(raw)
                parts = urlsplit(str(url))
                params = parse_qsl(parts.query) + [(k, str(v)) for k, v in params]
                with api.lock:
                    api.in_flight += 1
                    api.peak_in_flight = max(api.peak_in_flight, api.in_flight)
                    api.requests.append({"path": parts.path, "params": params})
                try:
                    if api.latency_s:
                        time.sleep(api.latency_s)
                    with api.lock:
                        return api.serve(parts.path, params, dict(kwargs.get("headers") or {}))
                finally:
                    with api.lock:
                        api.in_flight -= 1

        return Session()


NESTED = {
    "lineItems": "line_items",
    "payments": "payments",
    "refunds": "refunds",
    "discounts": "discounts",
    "credits": "credits",
}


class FakeClover(FakeOrders):
    def new_id(self) -> str:
        self._n += 1
        return f"O{self._n:012d}"

    def make(self, oid: str, t: int) -> dict[str, Any]:
        return {
            "id": oid,
            "modifiedTime": t,
            "createdTime": t,
            "total": 100,
            "lineItems": {"elements": [{"id": f"L{oid}-0", "price": 100}]},
            "payments": {"elements": []},
            "refunds": {"elements": []},
        }

    def set_time(self, order: dict[str, Any], t: int) -> None:
        order["modifiedTime"] = t

    def serve(self, path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> HttpReply:
        prefix = f"/v3/merchants/{CLOVER_MID}/orders"
        if path == prefix:
            return self._list(params)
        if path.startswith(prefix + "/"):
            oid, _, nested = path[len(prefix) + 1 :].partition("/")
            p = dict(params)
            if oid not in self.orders:
                return response(404, {"message": "not found"})
            if not nested:
                return response(200, self.view(oid, p.get("expand", "").split(",")))
            field = {v: k for k, v in NESTED.items()}[nested]
            full = self.orders[oid].get("_" + field) or self.orders[oid].get(field, {}).get("elements", [])
            off, lim = int(p.get("offset", 0)), min(1000, int(p.get("limit", 100)))
            return response(200, {"elements": full[off : off + lim]})
        return response(404, {"message": "not found"})

    def _list(self, params: list[tuple[str, str]]) -> HttpReply:
        lo = hi = None
        for k, v in params:
            if k == "filter" and v.startswith("modifiedTime>="):
                lo = int(v.split(">=")[1])
            elif k == "filter" and v.startswith("modifiedTime<"):
                hi = int(v.split("<")[1])
        p = dict(params)
        expand = [e for e in p.get("expand", "").split(",") if e]
        if len(expand) > 3:
            return response(400, {"message": "expand takes at most 3 fields"})
        # Clover's silent cut: a range wider than 90 days keeps only its latest 90 days.
        top = hi if hi is not None else self.now_ms
        if lo is None or top - lo > 90 * DAY_MS:
            lo = top - 90 * DAY_MS
        assert p.get("orderBy") == "modifiedTime ASC"
        window = self.select(lo, hi)
        limit = min(1000, int(p.get("limit", 100)))
        offset = int(p.get("offset", 0))
        page = window[offset : offset + limit]
        out = [self.view(oid, expand) for _, oid in page]
        self.after_page(window)
        return response(200, {"elements": out, "href": "x"})

    def view(self, oid: str, expand: list[str]) -> dict[str, Any]:
        """As Clover shows an order: expanded lists (a dotted path expands its parent) cut at
        100, absent if the order has none or if not expanded."""
        expand = [e.split(".", 1)[0] for e in expand]
        o: dict[str, Any] = json.loads(
            json.dumps({k: v for k, v in self.orders[oid].items() if not k.startswith("_")})
        )
        for f in NESTED:
            full = self.orders[oid].get("_" + f)
            if full is None:
                full = o.get(f, {}).get("elements") if isinstance(o.get(f), dict) else None
            o.pop(f, None)
            if f in expand and full:
                o[f] = {"elements": json.loads(json.dumps(full[:100]))}
        return o


class FakePoynt(FakeOrders):
    def __init__(self, seed: int = 1, start_inclusive: bool = True) -> None:
        super().__init__(seed)
        self.start_inclusive = start_inclusive

    def new_id(self) -> str:
        self._n += 1
        return f"00000000-0000-4000-8000-{self._n:012d}"

    def make(self, oid: str, t: int) -> dict[str, Any]:
        iso = ms_to_iso(t)
        amounts = {"netTotal": 100, "currency": "USD"}
        return {"id": oid, "createdAt": iso, "updatedAt": iso, "amounts": amounts}

    def set_time(self, order: dict[str, Any], t: int) -> None:
        order["updatedAt"] = ms_to_iso(t)

    def serve(self, path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> HttpReply:
        if path != f"/businesses/{POYNT_BIZ}/orders":
            return response(404, {"code": "NOT_FOUND"})
        p = dict(params)
        lo = iso_to_ms(p["startAt"]) if "startAt" in p else None
        if lo is not None and not self.start_inclusive:
            lo += 1
        hi = iso_to_ms(p["endAt"]) if "endAt" in p else None
        ims = headers.get("If-Modified-Since")
        if ims:
            since = int(datetime.strptime(ims, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC).timestamp())
            lo = max(lo or 0, since * 1000)
        window = self.select(lo, hi)
        limit = min(100, int(p.get("limit", 10)))
        offset = int(p.get("startOffset", 0))
        page = window[offset : offset + limit]
        body: dict[str, Any] = {"orders": [dict(self.orders[oid]) for _, oid in page], "count": len(window)}
        if offset + limit < len(window):
            q = "&".join(f"{k}={v}" for k, v in {**p, "startOffset": str(offset + limit)}.items())
            body["links"] = [{"href": f"/businesses/{POYNT_BIZ}/orders?{q}", "rel": "next", "method": "GET"}]
        self.after_page(window)
        return response(200, body)


class Tokens:
    def access_token(self, conn: Connection) -> str:
        return "tok"

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        return "tok2"


def unlimited() -> RequestLimiter:
    return RequestLimiter(TokenLimiter(None, None))


def clover_source(api: FakeClover, **config: Any) -> CloverSource:
    conn = Connection(provider="clover", merchant_id=CLOVER_MID)
    t = Transport(conn, "https://clover.test", Tokens(), unlimited(), http=api.session())
    return CloverSource(t, CLOVER_MID, SourceConfig(**config))


def poynt_source(api: FakePoynt, **config: Any) -> PoyntSource:
    conn = Connection(provider="poynt", merchant_id=POYNT_BIZ)
    t = Transport(conn, "https://poynt.test", Tokens(), unlimited(), http=api.session())
    return PoyntSource(t, POYNT_BIZ, SourceConfig(**config))


def naive_offset_pager(api: FakeClover, start: int, end: int, limit: int = 100) -> list[str]:
    """What the community tap does: plain offset paging over a time filter."""
    seen = []
    offset = 0
    sess = api.session()
    while True:
        params = [
            ("filter", f"modifiedTime>={start}"),
            ("filter", f"modifiedTime<{end}"),
            ("orderBy", "modifiedTime ASC"),
            ("limit", str(limit)),
            ("offset", str(offset)),
        ]
        url = f"https://clover.test/v3/merchants/{CLOVER_MID}/orders"
        els = json.loads(sess.get(url, params=params, headers={}, timeout=(1, 1)).content)["elements"]
        seen += [o["id"] for o in els]
        if len(els) < limit:
            return seen
        offset += limit


def far() -> Deadline:
    return Deadline.after(600)


def drain(pages: Iterator[Any]) -> list[Any]:
    return list(pages)


# --------------------------------------------------------------------------- the fakes' own tests


def test_fake_clover_cuts_wide_ranges_to_90_days_silently() -> None:
    api = FakeClover()
    api.add_spread(200, days=200)
    end = api.now_ms
    got = naive_offset_pager(api, end - 200 * DAY_MS, end, limit=1000)
    assert 0 < len(got) < 200
    assert all(api.times[o] >= end - 90 * DAY_MS for o in got)


def test_a_naive_offset_pager_loses_orders_when_they_move() -> None:
    # Given orders being modified while they are paged
    api = FakeClover(seed=3)
    ids = api.add_spread(1000, days=10)
    api.modify_per_page = 3
    # When a naive offset pager reads them
    got = set(naive_offset_pager(api, api.now_ms - 11 * DAY_MS, api.now_ms))
    # Then some orders that were never modified are missed (the fake is adversarial enough)
    untouched = set(ids) - set(api.modified_during_paging)
    assert untouched - got
