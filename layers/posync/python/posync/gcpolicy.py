"""The sync worker's garbage-collector policy, applied once per container at cold start.

A sync run parses and normalizes pages of up to 1,000 orders: some 100,000 new container
objects per page, and none of them in a reference cycle (parsed JSON and canonical orders
are trees, freed by reference counting as soon as a page is written). With CPython's
default thresholds ``(700, 10, 10)`` every page triggers a hundred young collections and,
as the pages in flight survive them, a full collection every page or two that walks every
live object (the pages in flight and botocore's service models). ``make bench`` measured
the collector at 60-70 % of the worker's CPU on a 100,000-order backfill (11-13 s of 19 s);
collecting the youngest generation every ``threshold0`` allocations instead of every 700
brings it down to a few percent and the CPU per order down by about a third. On Lambda the
worker's CPU (one vCPU at its 1,769 MB) is its throughput.

The worker applies it first thing, before its imports: importing boto3, Powertools and
posync under the default thresholds ran about a hundred collections, each walking the
(long-lived) objects imported so far. ``make bench`` measured the worker's cold start at
1.39x of a bare handler with the policy applied after the imports and 1.26x before them.

Cyclic garbage (rare here) is still collected, only later. Nothing is frozen: the policy is
safe in a long-lived process too (the local runtime and the tests load the worker in
process).
"""

from __future__ import annotations

import gc

SYNC_THRESHOLD0 = 100_000


def tune_for_sync(threshold0: int = SYNC_THRESHOLD0) -> tuple[int, int, int]:
    """Raise the youngest generation's threshold (never lower it); returns the previous thresholds.

    Idempotent; the older generations' thresholds are kept.
    """
    previous: tuple[int, int, int] = gc.get_threshold()
    gc.set_threshold(max(threshold0, previous[0]), previous[1], previous[2])
    return previous
