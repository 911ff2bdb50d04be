"""Downloads in parallel, builds in CPU slots: what the keyset engine holds, and where it prepares."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

import pytest

from posync.providers.clover.source import EXPAND, EXPAND_ORDER_LEVEL, CloverSource, Downloaded
from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, Prepare, SliceView
from tests.unit.test_sources_fakeapi import FakeClover, FakePoynt, clover_source, far, poynt_source


class Gauge:
    """Counts how many threads are inside a section at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def gauged(src: CloverSource, build_s: float = 0.01) -> tuple[Gauge, Gauge]:
    """Wrap the source's download and build (a build taking ``build_s``) in gauges."""
    downloads, builds = Gauge(), Gauge()
    download, build = src.download, src.build

    def gauged_download(view: SliceView, limit: int, deadline: Deadline) -> Downloaded:
        with downloads:
            return download(view, limit, deadline)

    def gauged_build(
        view: SliceView, downloaded: Downloaded, limit: int, deadline: Deadline, prepare: Prepare | None
    ) -> Fetched:
        with builds:
            time.sleep(build_s)  # a build is CPU: long enough here for overlaps to show
            return build(view, downloaded, limit, deadline, prepare)

    src.download = gauged_download  # type: ignore[method-assign]
    src.build = gauged_build  # type: ignore[method-assign]
    return downloads, builds


def read(src: CloverSource, start: int, end: int) -> list[str]:
    return [o["id"] for p in src.pages(src.plan(start, end), far()) for o in p.orders]


@pytest.mark.parametrize("slots", [1, 2])
def test_builds_run_in_their_slots_while_downloads_overlap(slots: int) -> None:
    # Given 3,000 orders, pages of 100, five fetches in flight and 20 ms of latency
    api = FakeClover()
    ids = api.add_spread(3000, days=20)
    api.latency_s = 0.02
    src = clover_source(api, page_limit=100, parallelism=5, cpu_slots=slots)
    downloads, builds = gauged(src)
    # When read
    got = read(src, api.now_ms - 21 * DAY_MS, api.now_ms)
    # Then every order comes once, downloads overlapped, and never more pages were built at once than slots
    assert Counter(got) == Counter(ids)
    assert downloads.peak >= 3
    assert builds.peak == slots


def test_prepare_runs_in_the_fetch_threads_and_the_pages_hold_what_it_made() -> None:
    # Given 1,200 orders, some of them read twice by the keyset's overlap at a millisecond
    api = FakeClover()
    ids = api.add_spread(1200, days=5)
    src = clover_source(api, page_limit=100, parallelism=3)
    seen: list[str] = []

    def prepare(raw: dict[str, Any]) -> tuple[str, str]:
        seen.append(raw["id"])
        return raw["id"], threading.current_thread().name

    # When read with a prepare step
    pages = list(src.pages(src.plan(api.now_ms - 6 * DAY_MS, api.now_ms), far(), prepare))
    held = [o for p in pages for o in p.orders]
    # Then each page holds prepare's results, made in fetch threads, once per order yielded
    assert Counter(oid for oid, _ in held) == Counter(ids)
    assert {name.rsplit("_", 1)[0] for _, name in held} == {"fetch-clover"}
    assert all(isinstance(o, tuple) for o in held)
    # and nothing the engine skips (rows already seen) was prepared twice for the caller
    assert len(seen) == len(held)


def test_orders_with_cut_lists_are_completed_outside_the_cpu_slot_then_prepared_whole() -> None:
    # Given an order with 250 line items (a list shows 100) beside an ordinary one, and one CPU slot
    api = FakeClover()
    items = [{"id": f"L{i}", "price": 1} for i in range(250)]
    big = api.add(api.now_ms - 100, _lineItems=items)
    small = api.add(api.now_ms - 50)
    src = clover_source(api, cpu_slots=1)
    slot_free_while_completing: list[bool] = []
    complete = src.complete

    def watched_complete(order: dict[str, Any], deadline: Deadline) -> None:
        free = src._cpu.acquire(blocking=False)
        if free:
            src._cpu.release()
        slot_free_while_completing.append(free)
        complete(order, deadline)

    src.complete = watched_complete  # type: ignore[method-assign]
    # When read with a prepare step that counts line items
    pages = list(
        src.pages(
            src.plan(api.now_ms - 1000, api.now_ms),
            far(),
            lambda raw: (raw["id"], len(raw["lineItems"]["elements"])),
        )
    )
    # Then only the big order needed completing, its requests ran with the slot free,
    assert slot_free_while_completing == [True]
    # and it was prepared whole
    assert dict(o for p in pages for o in p.orders) == {big: 250, small: 1}


def test_a_small_order_level_read_with_nothing_new_skips_the_big_read() -> None:
    # Given a slice resumed at the millisecond of its one order, already read
    api = FakeClover()
    t = api.now_ms - 1000
    oid = api.add(t)
    src = clover_source(api)
    plan = src.resume({"end": api.now_ms, "slices": [{"from": t, "to": api.now_ms, "ids": [oid]}]})
    # When read
    pages = list(src.pages(plan, far()))
    # Then nothing is yielded and the big read (line items, payments, refunds) was never asked for
    assert [o for p in pages for o in p.orders] == []
    expands = [dict(r["params"]).get("expand") for r in api.requests]
    assert expands == [EXPAND_ORDER_LEVEL]
    assert EXPAND not in expands


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_page_is_parsed_one_order_at_a_time_each_prepared_before_the_next_is_parsed(provider: str) -> None:
    # Given one page of 100 orders, each some 40 line items: a page whose objects outweigh its bytes
    api: FakeClover | FakePoynt = FakeClover() if provider == "clover" else FakePoynt()
    lines = [{"id": f"L{i}", "qty": [1, 2, 3, 4, 5, 6], "price": i, "tax": None} for i in range(40)]
    for i in range(100):
        api.add(api.now_ms - 10_000 + i, _lineItems=lines)
    src = clover_source(api) if isinstance(api, FakeClover) else poynt_source(api)
    page_bytes = len(json.dumps([{"lineItems": {"elements": lines}}] * 100, separators=(",", ":")))
    held: list[int] = []  # bytes traced at each prepare call

    def prepare(raw: dict[str, Any]) -> str:
        held.append(tracemalloc.get_traced_memory()[0])
        return str(raw["id"])

    # When read with a prepare step, memory traced
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pages = list(src.pages(src.plan(api.now_ms - 20_000, api.now_ms), far(), prepare))
        after = tracemalloc.get_traced_memory()[0]
        parsed = [json.loads(json.dumps(lines)) for _ in range(100)]
        page_of_objects = tracemalloc.get_traced_memory()[0] - after
        del parsed
    finally:
        tracemalloc.stop()
    # Then every order was prepared, and while they were, what was alive beyond the page's
    # bytes (and their text) stayed far below the page as objects (parsed whole, all 100 raw
    # orders would be alive at the first call)
    assert sum(len(p.orders) for p in pages) == 100 == len(held)
    assert page_of_objects > 4 * page_bytes  # the check below can tell the two apart
    assert max(held) - before < page_of_objects * 3 / 4


def test_no_fetch_thread_outlives_the_pages_when_the_caller_stops_early() -> None:
    # Given a read with five fetches in flight at 30 ms of latency
    api = FakeClover()
    api.add_spread(3000, days=20)
    api.latency_s = 0.03
    src = clover_source(api, page_limit=100, parallelism=5)
    pages = src.pages(src.plan(api.now_ms - 21 * DAY_MS, api.now_ms), far())
    # When the caller takes one page and stops (its invocation ends)
    next(pages)
    pages.close()
    # Then every fetch thread has been joined: none is left to run in a frozen container
    assert [t.name for t in threading.enumerate() if t.name.startswith("fetch-")] == []
