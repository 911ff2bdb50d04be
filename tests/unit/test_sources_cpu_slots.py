"""Downloads in parallel, builds in CPU slots: what the keyset engine holds, and where it prepares."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from posync.ratelimit import Deadline
from posync.sources import DAY_MS, Fetched, SliceView
from posync.sources.clover import EXPAND, EXPAND_ORDER_LEVEL, CloverSource, Downloaded
from tests.unit.test_sources_fakeapi import FakeClover, clover_source, far


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

    def gauged_build(view: SliceView, downloaded: Downloaded, limit: int, deadline: Deadline) -> Fetched:
        with builds:
            time.sleep(build_s)  # a build is CPU: long enough here for overlaps to show
            return build(view, downloaded, limit, deadline)

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


def test_a_small_first_read_with_nothing_new_skips_the_second_read() -> None:
    # Given a slice resumed at the millisecond of its one order, already read
    api = FakeClover()
    t = api.now_ms - 1000
    oid = api.add(t)
    src = clover_source(api)
    plan = src.resume({"end": api.now_ms, "slices": [{"from": t, "to": api.now_ms, "ids": [oid]}]})
    # When read
    pages = list(src.pages(plan, far()))
    # Then nothing is yielded and the order-level expansion was never asked for
    assert [o for p in pages for o in p.orders] == []
    expands = [dict(r["params"]).get("expand") for r in api.requests]
    assert expands == [EXPAND]
    assert EXPAND_ORDER_LEVEL not in expands
