"""The fetch pipeline against the Clover sandbox, without AWS (a counting sink, in-memory connections).

What the benchmark measures later: at 200 ms of latency per call, the per-token rate limit
(16 calls/s), not latency, bounds throughput; and nested lists cut at 100 come back whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from posync.config import Settings
from posync.domain import Connection, ConnectionStatus
from posync.ratelimit import Deadline, Limits
from posync.sources import DAY_MS, SourceConfig, build_source, ms_to_iso
from posync.sync import CountingSink, SourceFactory, SyncConfig, SyncService
from posync.syncqueue import SyncKind, SyncRequest
from posync_local.sandbox import CloverSandbox

pytestmark = pytest.mark.integration

ORDERS = 8000


class StaticTokens:
    def __init__(self, token: str) -> None:
        self.token = token

    def access_token(self, conn: Connection) -> str:
        return self.token

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        return self.token


class Connections:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.commits: list[dict[str, Any]] = []

    def get(self, provider: str, merchant_id: str) -> Connection:
        return self.conn

    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        return [self.conn], None

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        self.commits.append(last_run)
        self.conn.cursor = cursor

    def record_error(self, conn: Connection, message: str) -> None:
        raise AssertionError(message)


def clover_token(sb: CloverSandbox, merchant_id: str) -> str:
    """The sandbox's code flow for its default app (consent auto-approved)."""
    sb.knobs.auto_approve = True
    try:
        r = requests.get(
            f"{sb.url}/oauth/v2/authorize",
            params={
                "client_id": sb.client_id,
                "redirect_uri": "http://127.0.0.1/cb",
                "merchant_id": merchant_id,
            },
            allow_redirects=False,
            timeout=10,
        )
    finally:
        sb.knobs.auto_approve = False
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    r = requests.post(
        f"{sb.url}/oauth/v2/token",
        json={"client_id": sb.client_id, "client_secret": sb.client_secret, "code": code},
        timeout=10,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def clover() -> Iterator[CloverSandbox]:
    sb = CloverSandbox(port=0, seed=11).start()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="module")
def merchant(clover: CloverSandbox) -> str:
    return clover.add_merchant(orders=ORDERS, days=60)


def settings_for(sb: CloverSandbox) -> Settings:
    return Settings.from_env(
        {"POSYNC_CLOVER_OAUTH_BASE": sb.url, "POSYNC_CLOVER_API_BASE": sb.url, "POSYNC_STAGE": "pipe"}
    )


def test_at_200ms_latency_the_rate_limit_bounds_throughput(clover: CloverSandbox, merchant: str) -> None:
    # Given the sandbox at 200 ms per call with Clover's real limits, and 100-order pages
    clover.knobs.latency_ms = 200
    token = clover_token(clover, merchant)
    config = SyncConfig(limits={p: Limits.from_env(p, {}) for p in ("clover", "poynt")}, page_limit=100)
    conn = Connection(provider="clover", merchant_id=merchant)
    connections = Connections(conn)
    sink = CountingSink(keep_ids=True)
    service = SyncService(
        connections=connections,
        sources=SourceFactory(settings_for(clover), StaticTokens(token), config),
        sinks=lambda c, run_id: sink,
        enqueue=lambda req, dedup: None,
        config=config,
    )
    before = clover.stats.snapshot()
    # When a backfill runs through the whole pipeline (fetch, normalize, counting sink)
    t0 = time.monotonic()
    since = ms_to_iso(int(time.time() * 1000) - 61 * DAY_MS)
    result = service.run(SyncRequest("clover", merchant, SyncKind.BACKFILL, since=since), Deadline.after(600))
    elapsed = time.monotonic() - t0
    after = clover.stats.snapshot()
    # Then every order came once, without a single 429
    assert result.status == "completed"
    assert len(sink.ids) == len(set(sink.ids)) == ORDERS
    assert sink.quarantined == 0
    assert after["rate_limited"] == before["rate_limited"]
    # and the call rate was near the 16/s ceiling, twice what sequential calls manage (5/s)
    calls = sum(after["requests"].values()) - sum(before["requests"].values())
    assert calls >= ORDERS / 100
    rate = calls / elapsed
    assert rate > 10, f"{calls} calls in {elapsed:.1f} s"  # ceiling 15.5/s; sequential: 5/s
    clover.knobs.latency_ms = 0


def test_nested_lists_cut_at_100_come_back_whole(clover: CloverSandbox, merchant: str) -> None:
    # Given the sandbox's ground truth, which has orders with more than 100 line items
    truth = {o["id"]: o for o in clover.orders(merchant)}
    big = {oid for oid, o in truth.items() if len(o.get("lineItems", {}).get("elements", [])) > 100}
    assert big, "the seeded data has no order over 100 line items"
    token = clover_token(clover, merchant)
    settings = settings_for(clover)
    config = SyncConfig(limits={p: Limits.from_env(p, {}) for p in ("clover", "poynt")})
    conn = Connection(provider="clover", merchant_id=merchant)
    source = SourceFactory(settings, StaticTokens(token), config)(conn, Deadline.after(300))
    assert source.page_limit == 1000
    # When every order is read
    now = int(time.time() * 1000) + 1
    got: dict[str, dict[str, Any]] = {}
    for page in source.pages(source.plan(now - 61 * DAY_MS, now), Deadline.after(300)):
        for o in page.orders:
            got[o["id"]] = o
    # Then the big orders carry every line item (with their nested discounts, modifications, taxes)
    assert set(got) == set(truth)
    for oid in big:
        want = truth[oid]["lineItems"]["elements"]
        have = got[oid]["lineItems"]["elements"]
        assert [li["id"] for li in have] == [li["id"] for li in want]
        assert have == want
        for field in ("payments", "refunds"):
            assert got[oid].get(field, {}).get("elements", []) == truth[oid].get(field, {}).get(
                "elements", []
            )


def test_the_source_alone_uses_the_documented_expansions(clover: CloverSandbox, merchant: str) -> None:
    token = clover_token(clover, merchant)
    config = SourceConfig(parallelism=1, page_limit=5)
    from posync.ratelimit import RequestLimiter, TokenLimiter
    from posync.transport import Transport

    conn = Connection(provider="clover", merchant_id=merchant)
    transport = Transport(conn, clover.url, StaticTokens(token), RequestLimiter(TokenLimiter(16, 5)))
    source = build_source("clover", merchant, transport, config)
    now = int(time.time() * 1000)
    page = next(iter(source.pages(source.plan(now - DAY_MS, now), Deadline.after(60))))
    assert len(page.orders) <= 5
    for o in page.orders:
        assert isinstance(o["lineItems"], dict) and "elements" in o["lineItems"]
