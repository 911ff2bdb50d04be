"""Faults at the providers: 429 storms, 5xx, timeouts, revoked grants, spent refresh tokens, moving orders.

Each test: merchants connect (their backfill is queued), the faults are switched on and the
queue drained, the cursor is checked against what is durable, then the faults stop, the
schedule runs again and the invariants are checked (see the conftest).
"""

from __future__ import annotations

import pytest
import requests

from posync.domain import ConnectionStatus
from posync.tokens import SecretsManagerTokenStore
from tests.chaos.conftest import Chaos, Fault, stats_delta

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_a_429_storm_is_waited_out_and_loses_nothing(chaos: Chaos) -> None:
    # Given two merchants of each provider, whose APIs allow 3 calls/s and 2 in flight per token
    # (posync assumes 16 and 5), and 4 calls/s per app, and punish early retries
    for p in ("clover", "poynt", "clover", "poynt"):
        chaos.merchant(p, orders=30)
    before = {p: chaos.sandbox(p).stats.snapshot() for p in ("clover", "poynt")}
    for p in ("clover", "poynt"):
        knobs = chaos.sandbox(p).knobs
        knobs.per_token_rps = 3
        knobs.per_token_concurrency = 2
        knobs.per_app_rps = 4
        knobs.retry_after_ms = 150
    # When the backfills run through the storm
    report = chaos.drain()
    # Then the providers refused calls, and every run completed without a failed delivery
    chaos.provider_faults["http_429"] = sum(
        stats_delta(before[p], chaos.sandbox(p).stats.snapshot(), "rate_limited") for p in before
    )
    assert chaos.provider_faults["http_429"] > 0
    assert report.failures == 0
    for p, m in chaos.merchants:
        assert chaos.assert_cursor_covers(p, m) == 30
    chaos.settle()
    chaos.verify()


def test_clovers_429_header_names_are_understood_and_nothing_is_lost(chaos: Chaos) -> None:
    # Given two Clover merchants whose API allows 3 calls/s and 2 in flight per token and 5/s
    # per app (posync assumes 16, 5 and 50), naming each limit in the header's name
    # (X-RateLimit-tokenLimit, ...crossTokenLimit, ...tokenConcurrentLimit) and sending
    # Retry-After only with the concurrency 429s
    for _ in range(2):
        chaos.merchant("clover", orders=40)
    clover = chaos.clover()
    before = clover.stats.snapshot()
    clover.knobs.per_token_rps = 3
    clover.knobs.per_token_concurrency = 2
    clover.knobs.per_app_rps = 5
    # When the backfills run
    report = chaos.drain()
    # Then Clover refused calls for its rate and its concurrency limits
    after = clover.stats.snapshot()
    by_kind = {k: v - before["rate_limited_by"].get(k, 0) for k, v in after["rate_limited_by"].items()}
    chaos.provider_faults["clover_429"] = sum(by_kind.values())
    assert chaos.provider_faults["clover_429"] > 0
    # and posync read the limit from the header's name: it logged which one, and adopted it
    assert chaos.log_count(r'"limit":\s*"(token|app)-(rps|concurrency)"') > 0
    assert chaos.log_count(r'"limit":\s*"unnamed"') == 0
    assert chaos.log_count(r"adopted the provider's limit") > 0
    # And every run completed, every order is durable once
    assert report.failures == 0
    for p, m in chaos.merchants:
        assert chaos.assert_cursor_covers(p, m) == 40
    chaos.settle()
    chaos.verify()


def test_a_10_percent_5xx_rate_is_retried_and_loses_nothing(chaos: Chaos) -> None:
    # Given merchants of both providers behind APIs that fail 10% of calls with 500/502/503
    for p in ("clover", "poynt"):
        chaos.merchant(p, orders=60)
    before = {p: chaos.sandbox(p).stats.snapshot() for p in ("clover", "poynt")}
    for p in ("clover", "poynt"):
        chaos.sandbox(p).knobs.error_rate = 0.1
    # When the backfills run (in invocations of 2 s, so they may continue across messages)
    chaos.drain(worker_timeout_s=2.0)
    # Then 5xx were answered, and whatever the cursors claim is durable
    chaos.provider_faults["http_5xx"] = sum(
        stats_delta(before[p], chaos.sandbox(p).stats.snapshot(), "server_errors") for p in before
    )
    assert chaos.provider_faults["http_5xx"] > 0
    for p, m in chaos.merchants:
        chaos.assert_cursor_covers(p, m)
    chaos.settle()
    chaos.verify()


@pytest.mark.chaos_env(POSYNC_SYNC_READ_TIMEOUT_SECONDS="0.25")
def test_answers_slower_than_the_read_timeout_are_retried_and_lose_nothing(chaos: Chaos) -> None:
    # Given a provider whose answers take 400 ms while posync reads with a 250 ms timeout
    m = chaos.merchant("clover", orders=60)
    chaos.clover().knobs.latency_ms = 400
    # When the backfill runs for a while (invocations of 2 s)
    report = chaos.drain(worker_timeout_s=2.0, max_seconds=2.5)
    # Then requests timed out and were retried; the cursor claims nothing that is not durable
    chaos.provider_faults["read_timeout"] = chaos.log_count(r'"error":\s*"timeout"')
    assert chaos.provider_faults["read_timeout"] > 0
    assert report.messages >= 1
    chaos.assert_cursor_covers("clover", m)
    chaos.settle()
    chaos.verify()


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_grant_revoked_mid_run_stops_it_and_a_reconnect_finishes_it(chaos: Chaos, provider: str) -> None:
    # Given a merchant whose authorization is revoked at the provider after its 61st order is
    # stored (past its first pages)
    m = chaos.merchant(provider, orders=100)
    sb = chaos.sandbox(provider)
    chaos.faults.add(
        Fault(
            "grant_revoked",
            "dynamodb",
            "PutItem",
            when="after",
            target="-orders",
            skip=60,
            action=lambda: sb.revoke(m),
        )
    )
    # When the backfill runs
    report = chaos.drain()
    # Then the run stopped without a retry storm: the connection needs the merchant again, and
    # the pages stored before the revocation are durable under the committed progress
    assert report.dead_lettered == 0
    conn = chaos.connection(provider, m)
    assert conn.status is ConnectionStatus.NEEDS_REAUTH
    covered = chaos.assert_cursor_covers(provider, m)
    # (A Poynt pass claims no time until it completes: its progress is an anchored offset.)
    assert (0 < covered < 100) if provider == "clover" else covered == 0
    # When the merchant reconnects (its cursor is kept) and the schedule runs
    chaos.connect(provider, m)
    chaos.settle()
    # Then the run finished where it stopped and nothing is missing or doubled
    assert chaos.connection(provider, m).status is ConnectionStatus.ACTIVE
    chaos.verify()


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_refresh_token_spent_elsewhere_is_recovered_or_ends_in_needs_reauth_and_loses_nothing(
    chaos: Chaos, provider: str
) -> None:
    # Given a connection whose stored refresh token was used by someone else (a stale copy of
    # the secret refreshed elsewhere), and whose access token has since expired
    m = chaos.merchant(provider, orders=40)
    chaos.rt.apply_env()
    stored = SecretsManagerTokenStore(chaos.rt.settings).read(provider, m)
    sb = chaos.sandbox(provider)
    if provider == "clover":
        r = requests.post(
            f"{sb.url}/oauth/v2/refresh",
            json={"client_id": chaos.clover().client_id, "refresh_token": stored.refresh_token},
            timeout=10,
        )
    else:
        r = requests.post(
            f"{sb.url}/token",
            data={"grantType": "REFRESH_TOKEN", "refreshToken": stored.refresh_token},
            timeout=10,
        )
    assert r.status_code == 200, r.text
    chaos.provider_faults["refresh_reused"] = 1
    sb.expire_access_tokens(m)
    # When the backfill runs
    report = chaos.drain()
    # Then posync's refresh with the spent token is refused once (no retry loop, nothing
    # dead-lettered, nothing claimed as read). Clover recovers with that spent token (it is the
    # one immediately preceding the live one: CLV-TOKEN-03) and the connection stays active, the
    # other holder's token dying; Poynt has no recovery, so the connection needs the merchant
    assert report.dead_lettered == 0
    assert sb.stats.snapshot()["refresh_calls"].get(m, 0) >= 2
    chaos.assert_cursor_covers(provider, m)
    if provider == "clover":
        assert sb.stats.snapshot()["recoveries"].get(m) == 1
        assert chaos.connection(provider, m).status is ConnectionStatus.ACTIVE
    else:
        assert chaos.connection(provider, m).status is ConnectionStatus.NEEDS_REAUTH
        # When the merchant reconnects
        chaos.connect(provider, m)
    # And the schedule runs: nothing is lost or doubled
    chaos.settle()
    chaos.verify()


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_orders_modified_while_they_are_paged_are_all_caught(chaos: Chaos, provider: str) -> None:
    # Given a provider that modifies 2 already-served orders after every page it serves
    m = chaos.merchant(provider, orders=100)
    sb = chaos.sandbox(provider)
    before = sb.stats.snapshot()
    sb.knobs.modify_during_paging = 2
    # When the backfill runs
    report = chaos.drain()
    # Then orders moved under the pager, and the cursor claims only durable versions
    moved = len(sb.stats.snapshot()["paging_modified"]) - len(before["paging_modified"])
    chaos.provider_faults["modified_during_paging"] = moved
    assert moved > 0
    assert report.failures == 0
    chaos.assert_cursor_covers(provider, m)
    # When the changes stop and the schedule runs: every latest version is there, once
    chaos.settle()
    chaos.verify()
