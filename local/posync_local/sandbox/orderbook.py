"""Per-merchant order index: sorted by modified and created time, cheap pages, cached JSON fragments.

Orders are kept as small :class:`OrderState` records (id, times, version); the full order body is
generated on demand from them (deterministically, see ``data.py``) and the JSON of each order
version is cached per expand set, so serving a page is a bisect, a slice and a join of cached
fragments: no scan over the merchant's orders. The cache has a byte budget (oldest fragments are
dropped first) so memory stays bounded however many orders a benchmark pages through.

Orderings are by ``(time, id)``: ascending, or exactly reversed for descending, so ties on the same
millisecond always come out in the same order. ``touch`` (an order modified) moves the order to its
new ``modified_ms`` in the index, which shifts the offsets of every order after its old position:
exactly what makes offset paging over a moving window lose rows.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

INF = 1 << 62


class OrderState(NamedTuple):
    seq: int  # generation index: the order's body is generated from (merchant seed, seq)
    id: str
    created_ms: int
    modified_ms: int
    base_modified_ms: int = 0  # modified time as generated: when the order was closed (paid)
    version: int = 0  # 0 = as generated; +1 per modification
    first_touch_ms: int | None = None  # first modification: an open order is closed (paid) then
    deleted_ms: int | None = None  # deleted at the register (Clover ``deletedTimestamp``); see delete()


class OrderRec:
    __slots__ = ("cached", "state")

    def __init__(self, state: OrderState) -> None:
        self.state = state
        # (key, JSON) in one attribute, so a reader never pairs one version's key with another's JSON
        self.cached: tuple[object, bytes] | None = None


class FragmentCache:
    """A byte-budgeted FIFO of serialized order versions, shared by all merchants of a sandbox.

    Keys carry the order version, so a fragment rendered from a version that was modified
    meanwhile can never be served for the new one.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.size = 0
        self._fifo: deque[tuple[OrderRec, tuple[object, bytes]]] = deque()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, rec: OrderRec, key: object) -> bytes | None:
        cached = rec.cached
        if cached is not None and cached[0] == key:
            self.hits += 1
            return cached[1]
        self.misses += 1
        return None

    def put(self, rec: OrderRec, key: object, data: bytes) -> None:
        if self.budget <= 0:
            return
        entry = (key, data)
        with self._lock:
            if rec.cached is not None:
                self.size -= len(rec.cached[1])
            rec.cached = entry
            self.size += len(data)
            self._fifo.append((rec, entry))
            while self.size > self.budget and self._fifo:
                old, old_entry = self._fifo.popleft()
                if old.cached is old_entry:
                    old.cached = None
                    self.size -= len(old_entry[1])

    def drop(self, rec: OrderRec) -> None:
        with self._lock:
            if rec.cached is not None:
                self.size -= len(rec.cached[1])
            rec.cached = None

    def clear(self) -> None:
        with self._lock:
            for rec, entry in self._fifo:
                if rec.cached is entry:
                    rec.cached = None
            self._fifo.clear()
            self.size = 0


@dataclass(frozen=True)
class Query:
    """One list request: the ordering, inclusive time bounds per field, and the slice."""

    order_field: str  # "modified" | "created"
    desc: bool
    bounds: dict[str, tuple[int, int]]  # field -> (lo, hi), inclusive, epoch ms
    offset: int
    limit: int


class OrderBook:
    def __init__(self, cache: FragmentCache) -> None:
        self.lock = threading.RLock()
        self.cache = cache
        self.by_id: dict[str, OrderRec] = {}
        self._index: dict[str, list[tuple[int, str]]] = {"modified": [], "created": [], "deleted": []}
        self.next_seq = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def load(self, states: Iterable[OrderState]) -> list[str]:
        ids = []
        with self.lock:
            for st in states:
                if st.id in self.by_id:
                    raise ValueError(f"duplicate order id {st.id}")
                self.by_id[st.id] = OrderRec(st)
                self._index["modified"].append((st.modified_ms, st.id))
                self._index["created"].append((st.created_ms, st.id))
                self.next_seq = max(self.next_seq, st.seq + 1)
                ids.append(st.id)
            self._index["modified"].sort()
            self._index["created"].sort()
        return ids

    def add(self, st: OrderState) -> None:
        with self.lock:
            if st.id in self.by_id:
                raise ValueError(f"duplicate order id {st.id}")
            self.by_id[st.id] = OrderRec(st)
            insort(self._index["modified"], (st.modified_ms, st.id))
            insort(self._index["created"], (st.created_ms, st.id))
            self.next_seq = max(self.next_seq, st.seq + 1)

    def touch(self, order_id: str, now_ms: int) -> OrderState:
        """Modify an order now: a new version whose modified time is now (strictly later).

        A deleted order is not modified any more (returned as it is)."""
        with self.lock:
            rec = self.by_id[order_id]
            st = rec.state
            if st.deleted_ms is not None:
                return st
            new_ms = max(now_ms, st.modified_ms + 1)
            keys = self._index["modified"]
            i = bisect_left(keys, (st.modified_ms, order_id))
            del keys[i]
            insort(keys, (new_ms, order_id))
            touched = st.first_touch_ms if st.first_touch_ms is not None else new_ms
            rec.state = st._replace(modified_ms=new_ms, version=st.version + 1, first_touch_ms=touched)
            self.cache.drop(rec)
            return rec.state

    def states(self) -> list[OrderState]:
        """Every order's current state (deleted ones included), by modified time then id."""
        with self.lock:
            return sorted((r.state for r in self.by_id.values()), key=lambda st: (st.modified_ms, st.id))

    def delete(self, order_id: str, now_ms: int, *, move_modified: bool, keep_listed: bool) -> OrderState:
        """Delete an order now (``deleted_ms``), once. ``move_modified``: its modified time
        moves to the deletion (else it keeps its last one); ``keep_listed``: the lists still
        return it by modified and created time, else only a ``deletedTime`` filter finds it."""
        with self.lock:
            rec = self.by_id[order_id]
            st = rec.state
            if st.deleted_ms is not None:
                return st
            new_ms = max(now_ms, st.modified_ms + 1) if move_modified else st.modified_ms
            keys = self._index["modified"]
            del keys[bisect_left(keys, (st.modified_ms, order_id))]
            created = self._index["created"]
            if keep_listed:
                insort(keys, (new_ms, order_id))
            else:
                del created[bisect_left(created, (st.created_ms, order_id))]
            deleted_ms = max(now_ms, st.modified_ms)
            insort(self._index["deleted"], (deleted_ms, order_id))
            version = st.version + 1 if move_modified else st.version
            rec.state = st._replace(modified_ms=new_ms, deleted_ms=deleted_ms, version=version)
            self.cache.drop(rec)
            return rec.state

    def get(self, order_id: str) -> OrderRec | None:
        return self.by_id.get(order_id)

    # queries ------------------------------------------------------------------------------------

    def _matcher(self, q: Query) -> Callable[[OrderState], bool] | None:
        others = [(f, lo, hi) for f, (lo, hi) in q.bounds.items() if f != q.order_field]
        if not others:
            return None

        def ok(st: OrderState) -> bool:
            for f, lo, hi in others:
                t = st.modified_ms if f == "modified" else st.created_ms if f == "created" else st.deleted_ms
                if t is None or not lo <= t <= hi:
                    return False
            return True

        return ok

    def _positions(self, q: Query, end: int) -> tuple[list[str], int | None]:
        """Ids at positions [0, end) of the query's ordering, and the total count if cheap."""
        keys = self._index[q.order_field]
        lo, hi = q.bounds.get(q.order_field, (-INF, INF))
        i = bisect_left(keys, (lo,))
        j = bisect_left(keys, (hi + 1,)) if hi < INF else len(keys)
        match = self._matcher(q)
        if match is None:
            span = keys[max(i, j - end) : j][::-1] if q.desc else keys[i : min(j, i + end)]
            return [oid for _, oid in span], j - i
        out: list[str] = []
        rng = range(j - 1, i - 1, -1) if q.desc else range(i, j)
        for k in rng:
            oid = keys[k][1]
            if match(self.by_id[oid].state):
                out.append(oid)
                if len(out) >= end:
                    break
        return out, None

    def page(self, q: Query) -> tuple[list[OrderRec], list[OrderState], int | None]:
        """The page's records with a consistent snapshot of their states, and the total count
        (None when the query filters on a second field, where counting would cost a scan).
        O(log n + limit) when only the ordering field is filtered."""
        with self.lock:
            if "deleted" in q.bounds:
                recs = self._deleted_page(q)
                return recs, [r.state for r in recs], None
            if self._matcher(q) is None:
                keys = self._index[q.order_field]
                lo, hi = q.bounds.get(q.order_field, (-INF, INF))
                i = bisect_left(keys, (lo,))
                j = bisect_left(keys, (hi + 1,)) if hi < INF else len(keys)
                if q.desc:
                    stop = max(i, j - q.offset)
                    span = keys[max(i, stop - q.limit) : stop][::-1]
                else:
                    start = min(j, i + q.offset)
                    span = keys[start : min(j, start + q.limit)]
                recs = [self.by_id[oid] for _, oid in span]
                total: int | None = j - i
            else:
                ids, total = self._positions(q, q.offset + q.limit)
                recs = [self.by_id[oid] for oid in ids[q.offset :]]
            return recs, [r.state for r in recs], total

    def _deleted_page(self, q: Query) -> list[OrderRec]:
        """A ``deletedTime``-filtered list: the deleted orders in range, in the query's ordering."""
        lo, hi = q.bounds["deleted"]
        keys = self._index["deleted"]
        match = self._matcher(Query("deleted", q.desc, q.bounds, 0, 0))
        span = keys[bisect_left(keys, (lo,)) : bisect_left(keys, (hi + 1,))]
        states = [self.by_id[oid].state for _, oid in span]
        picked = [st for st in states if match is None or match(st)]
        field = "modified_ms" if q.order_field == "modified" else "created_ms"
        picked.sort(key=lambda st: (getattr(st, field), st.id), reverse=q.desc)
        return [self.by_id[st.id] for st in picked[q.offset : q.offset + q.limit]]

    def served_prefix(self, q: Query, end: int) -> list[str]:
        with self.lock:
            return self._positions(q, end)[0]
