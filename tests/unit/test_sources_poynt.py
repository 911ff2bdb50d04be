"""Poynt incremental reads under every reading of the docs (profiles of a fake Poynt).

A profile fixes what ``startAt``/``endAt`` filter (update or creation time), the order rows
come in, and the paging link's ``rel`` (or none). posync never sends startAt/endAt, bounds by
If-Modified-Since, and pages by anchored offsets: every test runs under every profile.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posync.sources import DAY_MS, iso_to_ms, ms_to_iso
from posync.transport import HttpReply
from tests.unit.test_sources_fakeapi import POYNT_BIZ, FakePoynt, far, poynt_source, response

PROFILES = {
    "guessed": ("updated", "updated_asc", "next"),
    "sdk": ("created", "created_desc", "NEXT"),
    "sparse": ("created", "id", None),
    "newest-first": ("updated", "updated_desc", "self-next"),
}


class ProfiledPoynt(FakePoynt):
    """A fake Poynt that behaves as one profile; ``created`` times never change."""

    def __init__(self, profile: str, seed: int = 1) -> None:
        super().__init__(seed)
        self.window, self.order, self.rel = PROFILES[profile]
        self.created: dict[str, int] = {}
        self.not_modified = 0

    def make(self, oid: str, t: int) -> dict[str, Any]:
        self.created[oid] = t
        return super().make(oid, t)

    def serve(self, path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> HttpReply:
        p = dict(params)
        key = self.times if self.window == "updated" else self.created
        lo = iso_to_ms(p["startAt"]) if "startAt" in p else None
        hi = iso_to_ms(p["endAt"]) if "endAt" in p else None
        since = None
        ims = headers.get("If-Modified-Since")
        if ims:
            since = (
                int(datetime.strptime(ims, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC).timestamp())
                * 1000
            )
        rows = [
            oid
            for oid in self.orders
            if (since is None or self.times[oid] >= since)
            and (lo is None or key[oid] >= lo)
            and (hi is None or key[oid] < hi)
        ]
        if since is not None and not rows:
            self.not_modified += 1
            return response(304, {})
        sorts = {
            "updated_asc": lambda o: (self.times[o], o),
            "updated_desc": lambda o: (-self.times[o], o),
            "created_desc": lambda o: (-self.created[o], o),
            "id": lambda o: o,
        }
        rows.sort(key=sorts[self.order])
        limit = min(100, int(p.get("limit", 10)))
        offset = int(p.get("startOffset", 0))
        page = rows[offset : offset + limit]
        body: dict[str, Any] = {"orders": [dict(self.orders[o]) for o in page], "count": len(rows)}
        if offset + limit < len(rows) and self.rel is not None:
            body["links"] = [
                {"href": f"/businesses/{POYNT_BIZ}/orders?startOffset={offset + limit}", "rel": self.rel}
            ]
        self.after_page([(self.times[o], o) for o in rows[: offset + len(page)]])
        return response(200, body)


def read(api: FakePoynt, start: int, end: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """One run: the ids read and the cursor it settles."""
    src = poynt_source(api)
    end = api.now_ms if end is None else end
    plan = src.plan(start, end)
    newest: int | None = None
    got = []
    for page in src.pages(plan, far()):
        got += [o["id"] for o in page.orders]
        if page.newest_ms is not None:
            newest = page.newest_ms if newest is None else max(newest, page.newest_ms)
    return got, src.settled_cursor(plan.end, newest)


def next_start(cursor: dict[str, Any], lookback_ms: int = 120_000) -> int:
    return iso_to_ms(cursor["updated_at"]) - lookback_ms


@pytest.mark.parametrize("profile", PROFILES)
def test_never_sends_startat_or_endat_and_bounds_by_if_modified_since_floored(profile: str) -> None:
    # Given a business with orders
    api = ProfiledPoynt(profile)
    api.add_spread(250, days=2)
    start = api.now_ms - 3 * DAY_MS + 789
    # When a run reads from a time with milliseconds
    got, _ = read(api, start)
    # Then no request carries startAt/endAt, all carry the bound floored to the second, limit 100
    assert len(got) == 250
    for r in api.requests:
        names = {k for k, _ in r["params"]}
        assert not names & {"startAt", "endAt"}
        assert dict(r["params"])["limit"] == "100"


@pytest.mark.parametrize("profile", PROFILES)
def test_older_orders_changed_between_runs_are_read_by_the_next_run(profile: str) -> None:
    # Given orders created over 60 days and a first run
    api = ProfiledPoynt(profile, seed=4)
    ids = api.add_spread(300, days=60)
    first, cursor = read(api, api.now_ms - 90 * DAY_MS)
    assert Counter(first) == Counter(ids)
    # When 45 of the oldest orders change (a cancellation, a refund) and time moves on
    api.now_ms += 3_600_000
    changed = sorted(ids, key=lambda o: api.created[o])[:45]
    for oid in changed:
        api.modify(oid)
    api.now_ms += 1000
    second, _ = read(api, next_start(cursor))
    # Then the next run reads all 45 at their new version (and little else)
    assert set(changed) <= set(second)
    assert len(second) < 60
    for oid in changed:
        assert iso_to_ms(api.orders[oid]["updatedAt"]) == api.times[oid]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("per_page", [1, 3, 15])
def test_orders_changed_while_being_paged_are_never_lost(profile: str, per_page: int) -> None:
    # Given 800 orders, several changed after every page the client reads
    api = ProfiledPoynt(profile, seed=per_page)
    ids = api.add_spread(800, days=5)
    api.modify_per_page = per_page
    end = api.now_ms
    first, cursor = read(api, end - 6 * DAY_MS, end)
    api.modify_per_page = 0
    api.now_ms += 1000
    second, _ = read(api, next_start(cursor))
    moved = set(api.modified_during_paging)
    # Then every unchanged order was read by the first run, no order twice at one version,
    # and every changed one by the second at its latest version
    assert moved
    assert set(ids) - moved <= set(first)
    assert moved <= set(second)


@pytest.mark.parametrize("profile", PROFILES)
def test_nothing_changed_is_one_304_and_the_cursor_stays(profile: str) -> None:
    # Given a business whose orders are all older than the run's bound
    api = ProfiledPoynt(profile)
    api.add_spread(30, days=10)
    api.now_ms += 3_600_000
    start = api.now_ms - 600_000
    # When a run reads
    got, cursor = read(api, start)
    # Then one request, answered 304, and the cursor stays where it was (plus the lookback)
    assert got == []
    assert api.not_modified == 1 and len(api.requests) == 1
    assert iso_to_ms(cursor["updated_at"]) == start + 120_000


def test_the_cursor_is_the_greatest_updated_at_seen_never_after_the_run_start() -> None:
    api = ProfiledPoynt("sdk")
    api.add_spread(50, days=1)
    newest = max(api.times.values())
    _, cursor = read(api, api.now_ms - 2 * DAY_MS, api.now_ms + 3_600_000)
    assert cursor["updated_at"] == ms_to_iso(newest + 1)
    _, cursor = read(api, api.now_ms - 2 * DAY_MS, newest - 5000)
    assert cursor["updated_at"] == ms_to_iso(newest - 5000)


@settings(max_examples=25, deadline=None)
@given(
    profile=st.sampled_from(list(PROFILES)),
    n=st.integers(0, 450),
    per_page=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_property_a_run_and_the_next_read_every_order_at_its_latest_version(
    profile: str, n: int, per_page: int, seed: int
) -> None:
    api = ProfiledPoynt(profile, seed=seed)
    ids = api.add_spread(n, days=3, ties_every=4)
    api.modify_per_page = per_page
    first, cursor = read(api, api.now_ms - 4 * DAY_MS)
    api.modify_per_page = 0
    api.now_ms += 1000
    second, _ = read(api, next_start(cursor))
    moved = set(api.modified_during_paging)
    assert set(ids) - moved <= set(first)
    assert moved <= set(second)
