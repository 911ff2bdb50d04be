"""Order sources: keyset paging over ``(modified time, id)`` that no moving window can fool.

The providers page by offset over a filter on modification time. An order modified while
we page leaves its place (its modified time becomes "now") and every later offset shifts
by one: a plain offset pager silently skips an order each time. posync never depends on
offsets staying put:

- **Keyset position.** A *slice* ``[start, end)`` of modification time is read with the
  filter ``modified >= start AND modified < end``, ordered ascending, **offset 0**. After a
  page, the position moves to the page's greatest modified time ``T`` and remembers the
  ids already seen at exactly ``T`` (``ids_at_T``); the next request starts at ``T`` again
  and skips those ids. An order that moves during paging moves *forward* (to "now"), so it
  is either still ahead of the position or past ``end`` (then the next run, which starts
  at ``end`` minus the lookback, reads it).
- **Ties bigger than a page.** If a whole page sits at one millisecond ``T``, offset 0
  would return it again: only then is that millisecond read by offset, in a slice
  ``[T, T+1)`` of its own (so orders leaving it shift nothing else), stepping with an
  overlap of a tenth of a page (covers up to that many orders of the tie leaving between
  two pages; seen ids are skipped), while the rest of the slice goes on from ``T+1``.
- **Windows.** A slice never spans more than ``max_window_ms`` (Clover silently cuts a
  filter wider than 90 days to the latest 90: posync never sends one).
- **Concurrency.** Slices are independent keysets, so they are fetched in parallel:
  windows from the start, and, as soon as a slice proves to hold more than a page, its
  remaining range is split so that ``parallelism`` fetches are in flight (work stealing:
  whenever a slice finishes, the biggest remaining one is split again). At 200 ms of
  latency the per-token rate limit, not latency, then bounds throughput.
- **Downloaded, then built.** A fetch is two steps: :meth:`KeysetSource.download` (the
  requests; their bodies kept as bytes) and :meth:`KeysetSource.build` (parse, merge,
  anything rare that needs another request), which hands each order the slice wants to
  the caller's ``prepare`` (the sync engine's normalization) as soon as it is parsed
  (:class:`Rows`): a body is parsed one order at a time
  (:func:`posync.transport.iter_json_list`), so a page never exists as raw orders all
  together. Downloads run ``parallelism`` at a time (they wait on latency and the rate
  limit); building, which is CPU (one thread runs Python at a time anyway), runs
  ``cpu_slots`` at a time. A Clover page's bytes are some 3 MB, its raw orders would be
  some 13 MiB of objects parsed at once (one order some 13 KiB), the serialized canonical
  orders made of them some 2.5 MB. Measured by ``make bench`` (peak RSS of a
  100,000-order backfill): parsing in all five fetches at once 157 MiB; parsing whole
  pages in one CPU slot 113-121 MiB; one order at a time, the canonical orders held as
  JSON text (``posync.serialized``) and the smallest of Clover's reads sent first
  (what a fetch holds while its second request waits) 85 MiB, against 72 MiB at 10,000
  orders. Throughput at 200 ms of latency went from 0.61 to 0.86-0.89 of what the rate
  limit allows for the requests it needs with the CPU slots (the threads no longer fight
  over the GIL with five pages of objects each). One slot (the default) against two: at
  200 ms 0.77-0.83 against 0.73-0.79 of that ceiling over four runs each on a slower day
  (a single building thread leaves the interpreter lock to the downloads more often), the
  same within the noise on a faster one (0.885 against 0.880; at 50 ms 0.941 against
  0.936).
- **Pages held.** Every fetch holds a page from its response until the caller takes it.
  When the caller writes pages more slowly than the fetches bring them, fetches running
  further ahead only queue: the
  number of fetches alive (in flight, or done and not yet yielded) is then kept to what
  keeps the caller fed, ``ceil(fetch time / caller time)`` (pages complete as fast as the
  caller takes them), at least ``min_ahead`` and at most ``parallelism`` (both times are
  moving averages). A caller faster than the fetches gets all ``parallelism``, as before.
- **Cursor.** Pages are yielded in the order their fetches complete, each with a
  ``progress`` snapshot that is valid once that page and every page before it are
  durable (fetches running ahead are not in it). The sync engine commits it only after its
  checkpoint; :meth:`KeysetSource.resume` continues from it exactly.

Providers plug in :meth:`KeysetSource.fetch` (one request, plus any nested paging) and
their time encoding; see ``posync.providers.clover.source``. Poynt cannot be read by this keyset (what its
``startAt``/``endAt`` filter and the order of its rows are not settled): its source keeps the
plan, cursor and page interfaces and reads its own way (``posync.providers.poynt.source``).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from posync.errors import InvalidInput
from posync.ratelimit import Deadline
from posync.times import iso_to_ms as iso_to_ms  # re-exported: callers import them from here
from posync.times import ms_to_iso as ms_to_iso
from posync.transport import Transport, TransportStats

DAY_MS = 86_400_000
DEFAULT_LOOKBACK_MS = 2 * 60_000
Prepare = Callable[[dict[str, Any]], Any]  # a raw order -> what the page holds instead
MIN_PAGES_PER_PIECE = 3  # a split piece's extra partial page costs at most a third more requests


@dataclass(frozen=True)
class SourceConfig:
    """How a source reads: fetches in flight, CPU slots, lookback, windows and page size."""

    parallelism: int = 5  # fetches in flight at once (the token's concurrency)
    cpu_slots: int = 1  # fetches building (parsing, preparing) a page at once
    min_ahead: int = 2  # fetches kept alive, at the least, for a caller slower than the fetches
    lookback_ms: int = DEFAULT_LOOKBACK_MS  # re-read this much before the cursor (late writes, skew)
    min_split_ms: int = 1_000  # never split a slice's remaining range below this
    page_limit: int | None = None  # None: the provider's maximum


@dataclass
class Slice:
    """One keyset: orders with ``start <= modified < end``; ``ids`` at exactly ``start`` are done."""

    start: int
    end: int
    ids: set[str] = field(default_factory=set)
    offset: int = 0  # > 0 only while stepping through a tie bigger than a page
    link: str | None = None  # the provider's last "next" link (Poynt), if any
    busy: bool = False
    density: float = 0.0  # orders per ms seen in this slice's last full page (0: unknown)

    def snapshot(self) -> SliceView:
        return SliceView(self.start, self.end, frozenset(self.ids), self.offset, self.link)

    def to_json(self, enc: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"from": enc(self.start), "to": enc(self.end), "ids": sorted(self.ids)}
        if self.offset:
            d["offset"] = self.offset
        return d


@dataclass(frozen=True)
class SliceView:
    """An immutable copy of a slice's position, handed to a fetch thread."""

    start: int
    end: int
    ids: frozenset[str]
    offset: int
    link: str | None

    def wants(self, t: int, oid: str) -> bool:
        """Is this order new to the slice (inside it and not seen at the keyset's millisecond)?"""
        return self.start <= t < self.end and not (t == self.start and oid in self.ids)


@dataclass(frozen=True)
class Fetched:
    """One list request's result, rows in the provider's order (ascending modified time)."""

    orders: list[Any]  # per row: what prepare made of it (raw while pending; None: not yielded)
    keys: list[tuple[int, str]]  # (modified ms, id) per order
    more: bool  # the provider says more rows may follow (full page / a next link)
    link: str | None = None
    stale: frozenset[str] = frozenset()  # ids whose version changed while being read: skipped here
    # Indexes of orders that :meth:`KeysetSource.complete` must finish (more requests, e.g.
    # nested lists cut short) before they are whole: done outside the CPU slot.
    pending: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What a run reads: the slices still to do and the run's upper bound ``end``."""

    end: int
    slices: tuple[tuple[int, int, tuple[str, ...], int], ...]  # (start, end, ids, offset)

    @property
    def done(self) -> bool:
        return not self.slices


@dataclass(frozen=True)
class Page:
    """One fetched page of a slice, with the position it makes valid once it is durable."""

    # The orders new to this run (nested lists complete), in the provider's order: raw, or
    # what the caller's ``prepare`` made of each.
    orders: list[Any]
    progress: dict[str, Any] | None  # JSON position valid once this page is durable; None = run done
    newest_ms: int | None  # greatest modified time among the page's orders
    rows: int  # rows the provider sent (before keyset de-duplication)


class Pace:
    """How many fetches to keep alive (in flight, or done and not yet taken) for a caller.

    Enough that a page is ready whenever the caller asks for the next one, and no more (each
    holds a parsed page): ``ceil(fetch / consume)`` from moving averages of a fetch's
    duration and of the caller's time per page, within ``[min_ahead, workers]``. Until both
    are measured: ``workers``.
    """

    ALPHA = 0.3  # weight of the newest measurement

    def __init__(self, workers: int, min_ahead: int = 2) -> None:
        self.workers = max(1, workers)
        self.min_ahead = max(1, min(min_ahead, self.workers))
        self.fetch_s: float | None = None
        self.consume_s: float | None = None

    @classmethod
    def _avg(cls, old: float | None, new: float) -> float:
        return new if old is None else old + cls.ALPHA * (new - old)

    def fetched(self, seconds: float) -> None:
        self.fetch_s = self._avg(self.fetch_s, max(0.0, seconds))

    def consumed(self, seconds: float) -> None:
        self.consume_s = self._avg(self.consume_s, max(0.0, seconds))

    @property
    def limit(self) -> int:
        if self.fetch_s is None or self.consume_s is None or self.consume_s <= 0:
            return self.workers
        ratio = self.fetch_s / self.consume_s
        if ratio >= self.workers:
            return self.workers
        return max(self.min_ahead, min(self.workers, math.ceil(ratio)))


class KeysetSource:
    """The keyset engine; subclasses implement :meth:`fetch` and the time encoding."""

    provider = ""
    time_key = ""  # the settled cursor's time field ("modified_ms" / "updated_at")
    max_window_ms = 90 * DAY_MS
    max_page_limit = 100

    def __init__(self, transport: Transport, config: SourceConfig | None = None) -> None:
        self.transport = transport
        self.config = config or SourceConfig()
        self._on_close: list[Callable[[], None]] = []
        limit = self.config.page_limit or self.max_page_limit
        self.page_limit = max(1, min(limit, self.max_page_limit))
        self.requests = 0
        self._lock = threading.Lock()
        self._cpu = threading.BoundedSemaphore(max(1, self.config.cpu_slots))
        self.pace: Pace | None = None  # the last pages() call's pacing (its measurements)

    @property
    def stats(self) -> TransportStats:
        return self.transport.stats

    def on_close(self, fn: Callable[[], None]) -> None:
        self._on_close.append(fn)

    def close(self) -> None:
        """Release what the source holds (e.g. the app's concurrency lease)."""
        while self._on_close:
            self._on_close.pop()()

    # ---- provider hooks

    def download(self, view: SliceView, limit: int, deadline: Deadline) -> Any:
        """The list request(s) for ``view``, bodies unparsed (``Transport.get(parse=False)``)."""
        raise NotImplementedError

    def build(
        self, view: SliceView, downloaded: Any, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> Fetched:
        """Parse what :meth:`download` returned, through :class:`Rows` (which prepares as it goes)."""
        raise NotImplementedError

    def complete(self, order: dict[str, Any], deadline: Deadline) -> None:
        """Finish an order :meth:`build` listed as pending (its further requests)."""

    def fetch(
        self, view: SliceView, limit: int, deadline: Deadline, prepare: Prepare | None = None
    ) -> Fetched:
        """One page for ``view``: downloaded, built (each order prepared as it is parsed), its
        pending orders completed and prepared.

        Parsing happens only inside a CPU slot (``cpu_slots`` at once), one raw order at a
        time, except the few pending orders while their requests run.
        """
        downloaded = self.download(view, limit, deadline)
        with self._cpu:
            fetched = self.build(view, downloaded, limit, deadline, prepare)
            del downloaded
        if fetched.pending:
            for i in fetched.pending:
                self.complete(fetched.orders[i], deadline)
            if prepare is not None:
                with self._cpu:
                    for i in fetched.pending:
                        fetched.orders[i] = prepare(fetched.orders[i])
        return fetched

    def encode_time(self, ms: int) -> Any:
        return ms

    def decode_time(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("cursor time is not an integer")
        return value

    # ---- cursors

    def settled(self, cursor: dict[str, Any]) -> int | None:
        """The settled cursor's time (ms), or None if the connection never synced."""
        if self.time_key not in cursor:
            return None
        return self.decode_time(cursor[self.time_key])

    def settled_cursor(self, end_ms: int, newest_ms: int | None) -> dict[str, Any]:
        """The cursor after a completed run: everything before ``end_ms`` is read."""
        c: dict[str, Any] = {"v": 1, self.time_key: self.encode_time(end_ms), "ids_at_T": []}
        if newest_ms is not None:
            c["newest"] = self.encode_time(newest_ms)
        return c

    def plan(self, start_ms: int, end_ms: int) -> Plan:
        """Windows of at most ``max_window_ms`` covering ``[start_ms, end_ms)``."""
        if end_ms <= start_ms:
            return Plan(end=max(start_ms, end_ms), slices=())
        slices = []
        t = start_ms
        while t < end_ms:
            u = min(end_ms, t + self.max_window_ms)
            slices.append((t, u, (), 0))
            t = u
        return Plan(end=end_ms, slices=tuple(slices))

    def resume(self, progress: dict[str, Any]) -> Plan:
        """The plan saved in a progress snapshot (a run continued by a new invocation)."""
        try:
            end = self.decode_time(progress["end"])
            slices = tuple(
                (
                    self.decode_time(s["from"]),
                    self.decode_time(s["to"]),
                    tuple(str(i) for i in s.get("ids", [])),
                    int(s.get("offset", 0)),
                )
                for s in progress["slices"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("malformed sync progress in the cursor") from exc
        for start, stop, _, _ in slices:
            if stop - start > self.max_window_ms or stop <= start:
                raise InvalidInput("sync progress holds an invalid window")
        return Plan(end=end, slices=slices)

    def plan_progress(self, plan: Plan) -> dict[str, Any] | None:
        """The progress snapshot of a plan nothing of which has been read yet."""
        return self._progress(plan.end, [Slice(a, b, set(ids), off) for a, b, ids, off in plan.slices])

    def _progress(self, end: int, slices: Sequence[Slice]) -> dict[str, Any] | None:
        if not slices:
            return None
        ordered = sorted(slices, key=lambda s: s.start)
        return {"end": self.encode_time(end), "slices": [s.to_json(self.encode_time) for s in ordered]}

    # ---- the engine

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self.requests += n

    def _timed_fetch(
        self, view: SliceView, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> tuple[Fetched, float]:
        t0 = time.monotonic()
        fetched = self.fetch(view, limit, deadline, prepare)
        return fetched, time.monotonic() - t0

    def pages(
        self, plan: Plan, deadline: Deadline, prepare: Prepare | None = None
    ) -> Generator[Page, None, None]:
        """Pages of new orders, fetched concurrently, each with a progress snapshot.

        ``prepare``, if given, runs in the fetch threads on every order a page yields (and
        must be safe to run concurrently): the page then holds what it returned.

        Raises what the transport raises (ProviderError, BudgetExhausted,
        AuthorizationRevoked), and what ``prepare`` raises; pages yielded before that stay
        valid.
        """
        slices = [Slice(start=a, end=b, ids=set(ids), offset=off) for a, b, ids, off in plan.slices]
        if not slices:
            yield Page([], None, None, 0)
            return
        workers = max(1, self.config.parallelism)
        pace = self.pace = Pace(workers, self.config.min_ahead)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"fetch-{self.provider}")
        inflight: dict[Future[tuple[Fetched, float]], Slice] = {}

        def submit_idle() -> None:
            limit = pace.limit  # fetches alive, the done ones not yet yielded included
            for s in sorted(slices, key=lambda s: s.start):
                if len(inflight) >= limit:
                    return
                if not s.busy:
                    s.busy = True
                    fut = pool.submit(self._timed_fetch, s.snapshot(), self.page_limit, deadline, prepare)
                    inflight[fut] = s

        try:
            submit_idle()
            while inflight:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                ready = sorted(done, key=lambda f: inflight[f].start, reverse=True)
                del done
                while ready:
                    fut = ready.pop()
                    s = inflight.pop(fut)
                    s.busy = False
                    fetched, seconds = fut.result()
                    del fut  # no reference to the future is left: the page is the caller's alone
                    pace.fetched(seconds)
                    new, newest, tie = self._apply(s, fetched)
                    rows = len(fetched.orders)
                    del fetched
                    if s.end <= s.start:  # finished
                        slices.remove(s)
                    if tie is not None:
                        slices.append(tie)
                    self._rebalance(slices, workers)
                    submit_idle()  # the next requests run while the caller writes this page
                    t0 = time.monotonic()
                    yield Page(new, self._progress(plan.end, slices), newest, rows)
                    pace.consumed(time.monotonic() - t0)
                    del new
        finally:
            for fut in inflight:
                fut.cancel()
            # Joined before the caller goes on: no fetch thread outlives the run (nor the Lambda
            # invocation, whose frozen container would otherwise resume it in the next one). A
            # fetch still running finishes its request: each wait is bounded by the deadline.
            pool.shutdown(wait=True, cancel_futures=True)

    def _apply(self, s: Slice, fetched: Fetched) -> tuple[list[Any], int | None, Slice | None]:
        """Take a page's new orders and move the slice's keyset (``end <= start`` marks it finished).

        Returns the new orders, their newest modified time, and a slice of its own for a tie
        bigger than a page (read by offset, apart from the rest, which goes on by keyset).
        """
        view = s.snapshot()
        new: list[Any] = []
        newest: int | None = None
        in_range: list[tuple[int, str]] = []
        beyond = False
        for (t, oid), raw in zip(fetched.keys, fetched.orders, strict=True):
            if t >= s.end:
                beyond = True
                continue
            if t < s.start:
                continue
            in_range.append((t, oid))
            # A stale row has a newer version, at a later modified time: read there (or next run).
            if view.wants(t, oid) and oid not in fetched.stale:
                new.append(raw)
                newest = t if newest is None else max(newest, t)
        if not fetched.more or beyond or not fetched.keys:
            s.start = s.end  # finished: everything in [start, end) has been seen
            return new, newest, None
        s.link = fetched.link
        step = max(1, len(fetched.orders) - max(1, self.page_limit // 10))
        if not in_range:
            # A full page of rows before the slice (a provider that widened the start, e.g. Poynt
            # read from startAt - 1 ms): nothing of the slice yet, so step past them by offset.
            s.offset += step
            return new, newest, None
        last = max(t for t, _ in in_range)
        s.density = len(in_range) / max(1, last - view.start)
        if last != s.start:
            s.start = last
            s.ids = {oid for t, oid in in_range if t == last}
            s.offset = 0
            return new, newest, None
        # The whole page sits at one millisecond. Offset 0 would return it again, so this tie is
        # stepped through by offset, with an overlap of a tenth of a page (seen ids are skipped):
        # in a slice of its own, [T, T+1), so that orders leaving the tie can shift nothing but
        # the tie itself; the rest of the slice goes on by keyset from T+1.
        s.ids.update(oid for t, oid in in_range if t == last)
        if s.end - s.start <= 1:
            s.offset += step
            return new, newest, None
        tie = Slice(start=last, end=last + 1, ids=set(s.ids), offset=s.offset + step)
        s.start, s.ids, s.offset, s.density = last + 1, set(), 0, 0.0
        return new, newest, tie

    def _rebalance(self, slices: list[Slice], workers: int) -> None:
        """Split the slices with the most pages left until ``workers`` slices exist (work stealing).

        A slice's remaining pages are estimated from the density of its last full page. Each
        piece costs about one extra request (its last, partial page), which spends the rate
        limit, so a slice is only split into pieces of at least ``MIN_PAGES_PER_PIECE`` pages.
        """
        while len(slices) < workers:
            candidates = [
                (s.density * (s.end - s.start) / self.page_limit, s)
                for s in slices
                if s.density > 0 and s.end - s.start >= 2 * self.config.min_split_ms
            ]
            if not candidates:
                return
            pages_left, big = max(candidates, key=lambda c: c[0])
            parts = min(
                workers - len(slices) + 1,
                int(pages_left // MIN_PAGES_PER_PIECE),
                (big.end - big.start) // self.config.min_split_ms,
            )
            if parts < 2:
                return
            width = (big.end - big.start) // parts
            bounds = [big.start + i * width for i in range(parts)] + [big.end]
            # The original keeps its keyset on the first part; a fetch in flight for it may return
            # rows past its new end: they are ignored there and read by the new slices.
            big.end = bounds[1]
            slices.extend(
                Slice(start=a, end=b, density=big.density) for a, b in itertools.pairwise(bounds[1:])
            )


class Rows:
    """A page's rows, collected as they are parsed: each order the page will yield is prepared
    at once, so that a page never exists as raw orders all together.

    Per row: its key, and the order prepared (``prepare``; the raw order if None), ``None``
    if the slice does not want it (outside the view, seen, or ``stale``), or the raw order
    while ``pending`` (:meth:`KeysetSource.complete` finishes it; the fetch prepares it
    after). A page yields a subset of what ``view`` (the slice as the fetch was sent)
    wants: the slice cannot gain rows while its fetch is in flight (a split only moves its
    end down).
    """

    def __init__(self, view: SliceView, prepare: Prepare | None) -> None:
        self.view = view
        self.prepare = prepare
        self.orders: list[Any] = []
        self.keys: list[tuple[int, str]] = []
        self.stale: set[str] = set()
        self.pending: list[int] = []

    def add(
        self, order: dict[str, Any], key: tuple[int, str], *, stale: bool = False, pending: bool = False
    ) -> None:
        t, oid = key
        self.keys.append(key)
        if stale:
            self.stale.add(oid)
        if stale or not self.view.wants(t, oid):
            self.orders.append(None)
        elif pending:
            self.pending.append(len(self.orders))
            self.orders.append(order)
        else:
            self.orders.append(order if self.prepare is None else self.prepare(order))

    def fetched(self, more: bool, link: str | None = None) -> Fetched:
        return Fetched(
            self.orders, self.keys, more, link, stale=frozenset(self.stale), pending=tuple(self.pending)
        )


def build_source(provider: str, merchant_id: str, transport: Transport, config: SourceConfig) -> KeysetSource:
    """The keyset source for one connection's provider."""
    if provider == "clover":
        from posync.providers.clover.source import CloverSource

        return CloverSource(transport, merchant_id, config)
    if provider == "poynt":
        from posync.providers.poynt.source import PoyntSource

        return PoyntSource(transport, merchant_id, config)
    raise InvalidInput(f"unknown provider {provider[:32]!r}")
