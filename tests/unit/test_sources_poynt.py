"""Poynt keyset paging: ISO windows, links, If-Modified-Since, moving windows, either startAt semantics."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from posync.sources import DAY_MS, iso_to_ms, ms_to_iso
from tests.unit.test_sources_fakeapi import POYNT_BIZ, FakePoynt, far, poynt_source


def read_run(api: FakePoynt, start: int, end: int, **config: Any) -> list[str]:
    src = poynt_source(api, **config)
    return [o["id"] for p in src.pages(src.plan(start, end), far()) for o in p.orders]


@pytest.mark.parametrize("start_inclusive", [True, False])
def test_every_order_once_whatever_startat_means(start_inclusive: bool) -> None:
    # Given orders with many ties at the same millisecond
    api = FakePoynt(start_inclusive=start_inclusive)
    ids = api.add_spread(700, days=10, ties_every=3)
    # When read / Then every order exactly once
    got = read_run(api, api.now_ms - 11 * DAY_MS, api.now_ms)
    assert Counter(got) == Counter(ids)


@pytest.mark.parametrize("seed", [1, 2])
def test_orders_modified_during_paging_are_never_lost(seed: int) -> None:
    api = FakePoynt(seed=seed)
    ids = api.add_spread(800, days=5)
    api.modify_per_page = 3
    end1 = api.now_ms
    first = read_run(api, end1 - 6 * DAY_MS, end1, parallelism=2)
    api.modify_per_page = 0
    second = read_run(api, end1 - 120_000, api.now_ms + 1)
    moved = set(api.modified_during_paging)
    assert moved
    assert len(first) == len(set(first))
    assert set(ids) - moved <= set(first)
    assert set(ids) <= set(first) | set(second)


def test_requests_carry_iso_windows_limit_100_and_if_modified_since() -> None:
    api = FakePoynt()
    api.add_spread(250, days=2)
    read_run(api, api.now_ms - 3 * DAY_MS, api.now_ms, page_limit=500, parallelism=1)
    assert len(api.requests) >= 3
    for r in api.requests:
        p = dict(r["params"])
        assert p["limit"] == "100"
        assert iso_to_ms(p["endAt"]) - iso_to_ms(p["startAt"]) <= 90 * DAY_MS + 1
        assert p["startAt"].endswith("Z")
        assert r["path"] == f"/businesses/{POYNT_BIZ}/orders"


def test_next_links_decide_whether_more_follows() -> None:
    # Given exactly one page of orders (no next link)
    api = FakePoynt()
    api.add_spread(100, days=1)
    read_run(api, api.now_ms - 2 * DAY_MS, api.now_ms)
    # Then one request: a full page without a next link is the end
    assert len(api.requests) == 1


def test_link_parameters_are_kept_but_offsets_come_from_the_keyset() -> None:
    api = FakePoynt()
    api.add_spread(150, days=1)
    read_run(api, api.now_ms - 2 * DAY_MS, api.now_ms, parallelism=1)
    second = dict(api.requests[1]["params"])
    assert second["startOffset"] == "0"  # never the link's 100
    assert iso_to_ms(second["startAt"]) > api.now_ms - 2 * DAY_MS


def test_iso_cursor() -> None:
    src = poynt_source(FakePoynt())
    c = src.settled_cursor(1_790_000_000_123, None)
    assert c["updated_at"] == "2026-09-21T14:13:20.123Z"
    assert src.settled(c) == 1_790_000_000_123
    assert ms_to_iso(iso_to_ms("2026-01-02T03:04:05.006+00:00")) == "2026-01-02T03:04:05.006Z"


@pytest.mark.parametrize("start_inclusive", [True, False])
def test_a_tie_bigger_than_a_page_right_before_the_keyset_neither_loops_nor_duplicates(
    start_inclusive: bool,
) -> None:
    # Given 150 orders in one millisecond (more than a 100-order page) followed by 50 more
    api = FakePoynt(start_inclusive=start_inclusive)
    t0 = api.now_ms - 100_000
    ids = [api.add(t0) for _ in range(150)] + [api.add(t0 + 1 + i) for i in range(50)]
    # When read (posync asks from startAt - 1 ms, so the tie sits before later keysets)
    got = read_run(api, t0 - 5, api.now_ms, parallelism=1)
    # Then every order exactly once, in a handful of requests
    assert Counter(got) == Counter(ids)
    assert len(api.requests) < 12


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    ties_every=st.integers(min_value=1, max_value=5),
    parallelism=st.integers(min_value=1, max_value=4),
    modify=st.integers(min_value=0, max_value=5),
    start_inclusive=st.booleans(),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_property_no_order_is_ever_lost_or_read_twice_in_a_run(
    n: int, ties_every: int, parallelism: int, modify: int, start_inclusive: bool, seed: int
) -> None:
    # Within the documented bound: at most a tenth of a page leaves a tie bigger than a page
    # between two of its pages (Poynt pages are 100 orders)
    assume(ties_every > 1 or n <= 100 or modify <= 10)
    api = FakePoynt(seed=seed, start_inclusive=start_inclusive)
    ids = api.add_spread(n, days=2, ties_every=ties_every)
    api.modify_per_page = modify
    end = api.now_ms
    first = read_run(api, end - 3 * DAY_MS, end, parallelism=parallelism)
    api.modify_per_page = 0
    second = read_run(api, end - 120_000, api.now_ms + 1)
    assert len(first) == len(set(first))
    assert set(ids) - set(api.modified_during_paging) <= set(first)
    assert set(ids) <= set(first) | set(second)
