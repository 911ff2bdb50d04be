"""Clover sandbox orders API: filters, the 90-day cut, limits, expand, nested cut and paging,
ordering, and orders that move while being paged."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import requests

from posync_local.sandbox import CloverSandbox
from posync_local.sandbox.client import bearer, clover_connect

pytestmark = pytest.mark.integration

DAY = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Api:
    def __init__(self, clover: CloverSandbox, mid: str) -> None:
        self.clover = clover
        self.mid = mid
        self.session = requests.Session()
        self.session.headers.update(bearer(clover_connect(clover, mid)["access_token"]))

    def get(self, path: str = "/orders", **params: Any) -> requests.Response:
        return self.session.get(f"{self.clover.url}/v3/merchants/{self.mid}{path}", params=params, timeout=30)

    def elements(self, **params: Any) -> list[dict[str, Any]]:
        r = self.get(**params)
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()["elements"]
        return out


def key(o: dict[str, Any]) -> tuple[int, str]:
    return (o["modifiedTime"], o["id"])


def test_orders_are_listed_with_the_default_order_and_limit(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=150, days=60)
    api = Api(clover, mid)
    reply = api.get().json()
    assert set(reply) == {"elements", "href"}
    assert reply["href"].startswith(f"{clover.url}/v3/merchants/{mid}/orders")
    got = reply["elements"]
    # default: 100, by createdTime descending (ties by id, reversed)
    assert len(got) == 100
    truth = sorted(clover.orders(mid), key=lambda o: (o["createdTime"], o["id"]), reverse=True)
    assert [o["id"] for o in got] == [o["id"] for o in truth[:100]]


def test_modified_time_filters_and_order_by(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=300, days=60)
    api = Api(clover, mid)
    truth = sorted(clover.orders(mid), key=key)
    lo, hi = truth[50]["modifiedTime"], truth[200]["modifiedTime"]
    got = api.elements(
        filter=[f"modifiedTime>={lo}", f"modifiedTime<{hi}"], orderBy="modifiedTime ASC", limit=1000
    )
    expected = [o for o in truth if lo <= o["modifiedTime"] < hi]
    assert [o["id"] for o in got] == [o["id"] for o in expected]
    desc = api.elements(
        filter=[f"modifiedTime>{lo}", f"modifiedTime<={hi}"], orderBy="modifiedTime DESC", limit=1000
    )
    assert [o["id"] for o in desc] == [o["id"] for o in reversed(truth) if lo < o["modifiedTime"] <= hi]
    by_created = api.elements(
        filter=[f"createdTime>={truth[0]['createdTime']}"], orderBy="createdTime ASC", limit=1000
    )
    assert [o["createdTime"] for o in by_created] == sorted(o["createdTime"] for o in by_created)


def test_some_orders_share_a_modified_millisecond_and_ties_sort_by_id(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=600, days=60)
    api = Api(clover, mid)
    got = api.elements(
        filter=[f"modifiedTime>={now_ms() - 70 * DAY}"], orderBy="modifiedTime ASC", limit=1000
    )
    ties = [(a, b) for a, b in itertools.pairwise(got) if a["modifiedTime"] == b["modifiedTime"]]
    assert ties, "expected some orders closing in the same millisecond"
    assert all(a["id"] < b["id"] for a, b in ties)


def test_a_filter_wider_than_90_days_is_silently_cut_to_the_latest_90(clover: CloverSandbox) -> None:
    # Given orders over 200 days
    mid = clover.add_merchant(orders=400, days=200)
    api = Api(clover, mid)
    truth = clover.orders(mid)
    # When asking for everything modified in the last 200 days (no upper bound)
    t0 = now_ms()
    got = api.elements(filter=[f"modifiedTime>={t0 - 200 * DAY}"], orderBy="modifiedTime ASC", limit=1000)
    t1 = now_ms()
    # Then only the latest 90 days come back, without an error
    assert got
    assert min(o["modifiedTime"] for o in got) >= t0 - 90 * DAY
    want = {o["id"] for o in truth if o["modifiedTime"] >= t1 - 90 * DAY}
    assert want <= {o["id"] for o in got}
    assert len(got) < len(truth)
    # And with an upper bound, the cut is measured from it
    hi = t0 - 100 * DAY
    older = api.elements(
        filter=[f"modifiedTime>={t0 - 200 * DAY}", f"modifiedTime<{hi}"],
        orderBy="modifiedTime ASC",
        limit=1000,
    )
    assert {o["id"] for o in older} == {o["id"] for o in truth if hi - 1 - 90 * DAY <= o["modifiedTime"] < hi}
    # And two windows of at most 90 days cover everything
    w1 = api.elements(filter=[f"modifiedTime>={t0 - 180 * DAY}", f"modifiedTime<{t0 - 90 * DAY}"], limit=1000)
    w2 = api.elements(filter=[f"modifiedTime>={t0 - 90 * DAY}"], limit=1000)
    w3 = api.elements(
        filter=[f"modifiedTime>={t0 - 270 * DAY}", f"modifiedTime<{t0 - 180 * DAY}"], limit=1000
    )
    assert {o["id"] for o in w1 + w2 + w3} == {o["id"] for o in truth}


def test_without_a_time_filter_only_the_last_90_days_of_created_orders_come(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=200, days=180)
    api = Api(clover, mid)
    t0 = now_ms()
    got = api.elements(limit=1000)
    assert got
    assert min(o["createdTime"] for o in got) >= t0 - 90 * DAY
    assert len(got) < 200


def test_limit_above_1000_acts_as_1000_and_offset_pages(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1300, days=60)
    api = Api(clover, mid)
    params: dict[str, Any] = {"filter": f"modifiedTime>={now_ms() - 80 * DAY}", "orderBy": "modifiedTime ASC"}
    first = api.elements(limit=5000, **params)
    assert len(first) == 1000
    rest = api.elements(limit=1000, offset=1000, **params)
    assert len(rest) == 300
    assert [o["id"] for o in first + rest] == [o["id"] for o in sorted(clover.orders(mid), key=key)]
    assert api.get(limit="x").status_code == 400
    assert api.get(offset=-1).status_code == 400


def test_expand_takes_at_most_three_fields(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=5, days=30)
    api = Api(clover, mid)
    ok = api.get(expand="lineItems,payments,refunds")
    assert ok.status_code == 200
    too_many = api.get(expand="lineItems,payments,refunds,discounts")
    assert too_many.status_code == 400
    assert "message" in too_many.json()
    # repeated expand parameters count together
    assert api.get(expand=["lineItems,payments", "refunds,credits"]).status_code == 400


def test_expansion_is_explicit_and_dotted_paths_count(clover: CloverSandbox) -> None:
    # Given the documented profile and an order with line items and a card payment
    mid = clover.add_merchant(orders=80, days=30)
    truth = next(
        o
        for o in clover.orders(mid)
        if o.get("payments")
        and "cardTransaction" in o["payments"]["elements"][0]
        and any("taxRates" in li for li in o["lineItems"]["elements"])
    )
    api = Api(clover, mid)
    path = f"/orders/{truth['id']}"
    # When read without expand, then no collection is there at all (not even an href)
    plain = api.get(path).json()
    assert not {"lineItems", "payments", "refunds", "discounts", "credits", "serviceCharge"} & set(plain)
    # When line items are expanded alone, then their own lists are not
    lines = api.get(path, expand="lineItems").json()["lineItems"]["elements"]
    assert lines and all(not {"modifications", "discounts", "taxRates"} & set(li) for li in lines)
    # When a dotted path is named, then it expands its parent and only that child
    taxed = api.get(path, expand="lineItems.taxRates").json()["lineItems"]["elements"]
    assert any("taxRates" in li for li in taxed)
    assert all("modifications" not in li for li in taxed)
    # And a payment's tender is a reference, its card transaction absent, unless expanded
    bare = api.get(path, expand="payments").json()["payments"]["elements"][0]
    assert set(bare["tender"]) == {"id"} and "cardTransaction" not in bare
    full = api.get(path, expand="payments.tender,payments.cardTransaction").json()["payments"]["elements"][0]
    assert full["tender"] == truth["payments"]["elements"][0]["tender"]
    assert full["cardTransaction"] == truth["payments"]["elements"][0]["cardTransaction"]
    # And dotted paths count toward the three expansions a call may name
    over = api.get(path, expand="lineItems,lineItems.taxRates,payments,refunds")
    assert over.status_code == 400
    assert "at most 3" in over.json()["message"]


def test_the_href_profile_shows_unexpanded_lists_as_hrefs(clover: CloverSandbox) -> None:
    # Given the reading where an unexpanded list is an href
    clover.profile = "href-unexpanded"
    try:
        mid = clover.add_merchant(orders=40, days=30)
        api = Api(clover, mid)
        plain = api.elements(limit=1)[0]
        assert set(plain["lineItems"]) == {"href"}
        assert plain["lineItems"]["href"].endswith(f"/v3/merchants/{mid}/orders/{plain['id']}/line_items")
        assert set(plain["payments"]) == {"href"}
        expanded = api.elements(limit=1, expand="lineItems,payments")[0]
        assert expanded["lineItems"]["elements"]
        assert set(expanded["refunds"]) == {"href"}
    finally:
        clover.profile = "documented"


def test_the_service_charge_expansion_is_the_definition(clover: CloverSandbox) -> None:
    # Given orders with a service charge (about 6 %)
    mid = clover.add_merchant(orders=300, days=30)
    truth = next(o for o in clover.orders(mid) if "serviceCharge" in o and o.get("payments"))
    api = Api(clover, mid)
    # When the order-level serviceCharge is expanded, then it is the definition, not an amount
    sc = api.get(f"/orders/{truth['id']}", expand="serviceCharge").json()["serviceCharge"]
    assert set(sc) == {"id", "name", "enabled", "percentageDecimal"}
    assert sc["percentageDecimal"] == 180_000  # 18 %: percent x 10,000
    # And the payments carry the amount each collected (documented profile)
    charged = [p["serviceCharge"]["amount"] for p in truth["payments"]["elements"]]
    assert sum(charged) > 0


def test_nested_lists_are_cut_at_100_and_paged_separately(clover: CloverSandbox) -> None:
    # Given a merchant with at least one order of more than 100 line items (about 1 in 300)
    mid = clover.add_merchant(orders=1200, days=60)
    big = next(o for o in clover.orders(mid) if len(o["lineItems"]["elements"]) > 100)
    n = len(big["lineItems"]["elements"])
    api = Api(clover, mid)
    # When it is read with its line items and their lists expanded
    every = "lineItems.modifications,lineItems.discounts,lineItems.taxRates"
    r = api.get(f"/orders/{big['id']}", expand=every)
    assert r.status_code == 200
    cut = r.json()["lineItems"]["elements"]
    # Then only the first 100 come
    assert len(cut) == 100
    assert cut == big["lineItems"]["elements"][:100]
    # And the nested endpoint pages the rest, with its own expand
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = api.get(
            f"/orders/{big['id']}/line_items",
            limit=100,
            offset=offset,
            expand="modifications,discounts,taxRates",
        ).json()["elements"]
        items += page
        offset += len(page)
        if len(page) < 100:
            break
    assert len(items) == n
    assert items == big["lineItems"]["elements"]
    bare = api.get(f"/orders/{big['id']}/line_items", limit=1000).json()["elements"]
    assert all("taxRates" not in li for li in bare)
    payments = api.get(f"/orders/{big['id']}/payments", expand="tender,cardTransaction").json()["elements"]
    assert payments == big.get("payments", {}).get("elements", [])


def test_api_orders_equal_the_ground_truth(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=120, days=60, currency="JPY")
    api = Api(clover, mid)
    reads = {
        "lineItems.modifications,lineItems.discounts,lineItems.taxRates": ("lineItems",),
        "payments.tender,payments.cardTransaction,refunds": ("payments", "refunds"),
        "discounts,serviceCharge,credits": ("discounts", "serviceCharge", "credits"),
    }
    truth = sorted(clover.orders(mid), key=key)
    collections = {name for names in reads.values() for name in names}
    for expand, names in reads.items():
        got = api.elements(
            filter=f"modifiedTime>={now_ms() - 80 * DAY}",
            orderBy="modifiedTime ASC",
            limit=1000,
            expand=expand,
        )
        for api_order, true_order in zip(got, truth, strict=True):
            expected = {k: v for k, v in true_order.items() if k not in collections or k in names}
            if len(true_order["lineItems"]["elements"]) > 100 and "lineItems" in names:
                expected["lineItems"] = {"elements": true_order["lineItems"]["elements"][:100]}
            assert api_order == expected
        assert {o["currency"] for o in got} == {"JPY"}


def test_unknown_order_is_404(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1)
    api = Api(clover, mid)
    r = api.get("/orders/NOSUCHORDER00")
    assert r.status_code == 404
    assert api.get("/orders/NOSUCHORDER00/line_items").status_code == 404
    assert api.get(filter="total>5").status_code == 400


def test_created_and_modified_orders_show_up_with_new_times_and_no_stale_cache(clover: CloverSandbox) -> None:
    # Given a merchant whose orders have been read once (and cached)
    mid = clover.add_merchant(orders=30, days=10)
    api = Api(clover, mid)
    before = api.elements(
        filter=f"modifiedTime>={now_ms() - 20 * DAY}", orderBy="modifiedTime ASC", expand="lineItems,payments"
    )
    t = now_ms()
    # When orders are created and modified
    created = clover.create_orders(mid, 3)
    changed = clover.modify_orders(mid, [before[0]["id"], before[1]["id"]])
    # Then a read since t brings exactly those, at their new versions
    after = api.elements(filter=f"modifiedTime>={t}", orderBy="modifiedTime ASC", expand="lineItems,payments")
    assert {o["id"] for o in after} == set(created) | set(changed)
    for o in after:
        assert o["modifiedTime"] >= t
    old = {o["id"]: o for o in before}
    for o in after:
        if o["id"] in old:
            assert o["note"].startswith("Updated")
            assert o["modifiedTime"] > old[o["id"]]["modifiedTime"]
            assert o["total"] == old[o["id"]]["total"]
    assert len(clover.orders(mid)) == 33


def test_modifying_an_open_order_closes_and_pays_it(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=300, days=30)
    open_order = next(o for o in clover.orders(mid) if o["state"] == "open")
    assert "payments" not in open_order
    clover.modify_orders(mid, [open_order["id"]])
    closed = clover.order(mid, open_order["id"])
    assert closed["state"] == "locked"
    assert closed["paymentState"] == "PAID"
    assert sum(p["amount"] for p in closed["payments"]["elements"]) == closed["total"]
    assert closed["payments"]["elements"][0]["createdTime"] == closed["modifiedTime"]


def test_second_read_comes_from_the_fragment_cache(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=200, days=30)
    api = Api(clover, mid)
    params: dict[str, Any] = {
        "filter": f"modifiedTime>={now_ms() - 40 * DAY}",
        "limit": 1000,
        "expand": "lineItems",
    }
    first = api.get(**params).content
    hits = clover.cache.hits
    second = api.get(**params).content
    assert first == second
    assert clover.cache.hits - hits == 200


def naive_pager(api: Api, lo: int, hi: int, limit: int) -> tuple[list[list[str]], list[list[str]]]:
    """Offset paging over modifiedTime ASC; returns the pages and what the sandbox modified after each."""
    pages: list[list[str]] = []
    modified: list[list[str]] = []
    offset = 0
    while True:
        seen = len(api.clover.stats.paging_modified)
        page = api.elements(
            filter=[f"modifiedTime>={lo}", f"modifiedTime<{hi}"],
            orderBy="modifiedTime ASC",
            limit=limit,
            offset=offset,
        )
        pages.append([o["id"] for o in page])
        modified.append(api.clover.stats.paging_modified[seen:])
        offset += len(page)
        if len(page) < limit:
            return pages, modified


def test_orders_modified_while_paging_shift_offsets_and_a_naive_pager_misses_them(
    clover: CloverSandbox,
) -> None:
    # Given 300 orders in a window that ends before now, and 2 orders modified after every page
    mid = clover.add_merchant(orders=300, days=30)
    api = Api(clover, mid)
    lo, hi = now_ms() - 40 * DAY, now_ms() - 1
    window = [o["id"] for o in sorted(clover.orders(mid), key=key) if lo <= o["modifiedTime"] < hi]
    clover.knobs.modify_during_paging = 2
    # When a naive offset pager reads the window 50 at a time
    pages, modified = naive_pager(api, lo, hi, 50)
    # Then every page is exactly what the real API would serve: the window as it stands, from the
    # offset; the orders modified had been passed already and left the window, so the next orders
    # slid under the offset
    current = list(window)
    offset = 0
    slid: set[str] = set()
    for page, changed in zip(pages, modified, strict=True):
        assert page == current[offset : offset + 50]
        end = offset + len(page)
        assert len(changed) == 2
        assert all(oid in current[:end] for oid in changed)
        slid |= set(current[end : end + len(changed)])
        current = [oid for oid in current if oid not in changed]
        offset = end
    # And the naive pager misses exactly those: 2 per page it followed
    seen = {oid for page in pages for oid in page}
    missed = set(window) - seen
    assert missed == slid
    assert len(missed) == 2 * (len(pages) - 1)
    # And a full re-read (no upper bound, knob off) finds every order, the moved ones at new times
    clover.knobs.modify_during_paging = 0
    reread = api.elements(filter=f"modifiedTime>={lo}", orderBy="modifiedTime ASC", limit=1000)
    ids = {o["id"] for o in reread}
    assert set(window) <= ids
    moved = {oid for changed in modified for oid in changed}
    assert all(o["modifiedTime"] >= hi for o in reread if o["id"] in moved)
