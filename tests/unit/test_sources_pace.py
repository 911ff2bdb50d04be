"""Pace: how many fetches the keyset engine keeps alive for its caller."""

from __future__ import annotations

from posync.sources import Pace


def test_until_measured_every_worker_fetches() -> None:
    assert Pace(5).limit == 5
    p = Pace(5)
    p.fetched(1.0)
    assert p.limit == 5


def test_a_caller_faster_than_the_fetches_gets_every_worker() -> None:
    p = Pace(5)
    p.fetched(0.8)
    p.consumed(0.01)
    assert p.limit == 5


def test_a_slow_caller_gets_what_keeps_it_fed_and_never_less_than_min_ahead() -> None:
    p = Pace(5, min_ahead=2)
    p.fetched(1.0)
    p.consumed(0.4)
    assert p.limit == 3  # ceil(1.0 / 0.4)
    q = Pace(5, min_ahead=2)
    q.fetched(0.1)
    q.consumed(1.0)
    assert q.limit == 2
    assert Pace(1, min_ahead=2).limit == 1
