"""The worker's garbage-collector policy (posync.gcpolicy): collect the young generation rarely."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from posync.gcpolicy import SYNC_THRESHOLD0, tune_for_sync


@pytest.fixture(autouse=True)
def _restore_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_it_raises_the_young_threshold_and_keeps_the_older_ones() -> None:
    # Given CPython's default thresholds
    gc.set_threshold(700, 10, 10)
    # When the policy is applied
    previous = tune_for_sync()
    # Then the young generation is collected every SYNC_THRESHOLD0 allocations, the rest is unchanged
    assert previous == (700, 10, 10)
    assert gc.get_threshold() == (SYNC_THRESHOLD0, 10, 10)
    # and applying it again changes nothing
    assert tune_for_sync() == (SYNC_THRESHOLD0, 10, 10)
    assert gc.get_threshold() == (SYNC_THRESHOLD0, 10, 10)


def test_it_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(500_000, 20, 30)
    tune_for_sync(50_000)
    assert gc.get_threshold() == (500_000, 20, 30)


def test_a_page_of_acyclic_objects_no_longer_triggers_collections() -> None:
    # Given the policy, and a count of collections
    gc.set_threshold(700, 10, 10)
    tune_for_sync()
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        # When a page's worth of parsed orders (dicts in lists, no cycles) is built
        page = [{"id": str(i), "lineItems": {"elements": [{"n": j} for j in range(5)]}} for i in range(5000)]
    finally:
        gc.callbacks.remove(count)
    # Then (about 35,000 container objects) no collection ran; with the defaults dozens would have
    assert len(page) == 5000
    assert seen == []
