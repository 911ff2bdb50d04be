"""The polling policy: intervals by activity, coalescing, the tick's budget and the staleness bound."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from posync.config import ConfigError
from posync.domain import Connection
from posync.schedule import (
    ACTIVE,
    COOLING,
    IDLE,
    NEW,
    Candidate,
    PollConfig,
    State,
    assess,
    interval_for,
    plan,
)

NOW = datetime(2026, 11, 23, 18, 15, tzinfo=UTC).timestamp()
CFG = PollConfig(tick_s=900, max_interval_s=3600, active_s=3600, pending_s=3600, budget_share=0.9)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def synced(
    *,
    polled_ago: float,
    newest_ago: float | None,
    kind: str = "scheduled",
    requests: int = 1,
    queued_ago: float | None = None,
    running: bool = False,
    provider: str = "clover",
) -> Connection:
    """A connection whose last run started ``polled_ago`` s before NOW and read up to its start."""
    started = NOW - polled_ago
    cursor: dict[str, Any] = {"v": 1, "modified_ms": int(started * 1000), "ids_at_T": []}
    if newest_ago is not None:
        cursor["newest"] = int((NOW - newest_ago) * 1000)
    if running:
        cursor["run"] = {"id": "r"}
    last = {
        "status": "in_progress" if running else "completed",
        "kind": kind,
        "started_at": iso(started),
        "checkpoint_at": iso(started),
        "counts": {"requests": requests},
    }
    mid = "M000000000001" if provider == "clover" else "0b2c5d2e-1111-4222-8333-944455556666"
    return Connection(
        provider=provider,
        merchant_id=mid,
        cursor=cursor,
        last_run=last,
        queued_at=None if queued_ago is None else iso(NOW - queued_ago),
    )


def test_the_interval_doubles_with_the_quiet_time_up_to_the_bound() -> None:
    assert interval_for(CFG, 60) == (900, ACTIVE)
    assert interval_for(CFG, 3600) == (900, ACTIVE)
    assert interval_for(CFG, 1.5 * 3600) == (1800, COOLING)
    assert interval_for(CFG, 2 * 3600) == (1800, COOLING)
    assert interval_for(CFG, 3 * 3600) == (3600, IDLE)
    assert interval_for(CFG, 90 * 86400) == (3600, IDLE)
    assert interval_for(CFG, None) == (3600, IDLE)


def test_an_active_connection_is_polled_every_tick() -> None:
    # Given an order a few minutes ago and a poll one tick ago
    a = assess(synced(polled_ago=900, newest_ago=300), NOW, CFG)
    # Then it is due again, polled on the schedule
    assert (a.state, a.cls, a.interval_s) == (State.DUE, ACTIVE, 900)


def test_an_idle_connection_waits_for_its_interval() -> None:
    # Given a connection quiet for days, polled 30 minutes ago
    quiet = synced(polled_ago=1800, newest_ago=5 * 86400)
    assert assess(quiet, NOW, CFG).state is State.NOT_DUE
    # When 55 minutes have passed (within half a tick of its hour)
    assert assess(synced(polled_ago=3300, newest_ago=5 * 86400), NOW, CFG).state is State.DUE


def test_a_webhook_triggered_run_makes_a_connection_active() -> None:
    # Given a connection with no order for days, whose last run a webhook triggered 20 minutes ago
    conn = synced(polled_ago=1200, newest_ago=5 * 86400, kind="webhook")
    a = assess(conn, NOW, CFG)
    # Then it is polled on the schedule (the webhook brought it forward; its webhooks are healthy)
    assert (a.cls, a.interval_s, a.state) == (ACTIVE, 900, State.DUE)


def test_a_queued_sync_not_yet_run_coalesces_until_it_goes_silent() -> None:
    # Given a sync queued 10 minutes ago, after the last run started (2 hours ago)
    pending = synced(polled_ago=7200, newest_ago=300, queued_ago=600)
    assert assess(pending, NOW, CFG).state is State.PENDING
    # When the queued sync was never answered for longer than pending_s
    silent = synced(polled_ago=3 * 3600, newest_ago=300, queued_ago=3700)
    assert assess(silent, NOW, CFG).state is State.DUE
    # And a mark older than the last run's start is answered
    answered = synced(polled_ago=900, newest_ago=300, queued_ago=950)
    assert assess(answered, NOW, CFG).state is State.DUE


def test_a_run_in_progress_coalesces_until_its_checkpoints_stop() -> None:
    assert assess(synced(polled_ago=600, newest_ago=60, running=True), NOW, CFG).state is State.RUNNING
    assert assess(synced(polled_ago=7200, newest_ago=60, running=True), NOW, CFG).state is State.DUE


def test_a_never_synced_connection_is_due_at_once_unless_queued() -> None:
    fresh = Connection(provider="clover", merchant_id="M000000000001")
    a = assess(fresh, NOW, CFG)
    assert (a.state, a.cls) == (State.DUE, NEW)
    fresh.queued_at = iso(NOW - 60)
    assert assess(fresh, NOW, CFG).state is State.PENDING


def test_cost_is_the_last_scheduled_runs_requests() -> None:
    assert assess(synced(polled_ago=900, newest_ago=60, requests=7), NOW, CFG).cost == 7
    assert assess(synced(polled_ago=3600, newest_ago=9 * 86400, requests=0), NOW, CFG).cost == 1
    # an active connection is likely to have changes: at least Clover's two reads
    assert assess(synced(polled_ago=900, newest_ago=60, requests=1), NOW, CFG).cost == 2
    # a backfill's count says nothing about a poll: the provider's default
    assert assess(synced(polled_ago=900, newest_ago=60, kind="backfill", requests=900), NOW, CFG).cost == 2


def test_the_plan_never_exceeds_the_budget_and_defers_the_least_stale() -> None:
    # Given Clover's 50/s, a 15-minute tick and 90 %: 40,500 requests
    assert CFG.budget("clover") == 40_500
    due = [
        Candidate(urgency=i / 30_000, cost=2, provider="clover", merchant_id=f"m{i}", connection_id=f"c{i}")
        for i in range(30_000)
    ]
    # When 60,000 requests are due
    out = plan(due, CFG)
    # Then 40,500 are planned, the most stale first, and the rest deferred
    assert out.planned["clover"] == 40_500 and out.demand["clover"] == 60_000
    assert len(out.chosen) == 20_250 and len(out.deferred) == 9_750
    assert min(c.urgency for c in out.chosen) > max(c.urgency for c in out.deferred)


def test_poynt_uses_the_same_policy_with_its_configured_limit() -> None:
    cfg = PollConfig.from_env({"POSYNC_POYNT_APP_RPS": "5", "POSYNC_POLL_MAX_INTERVAL_MINUTES": "120"}, 15)
    assert cfg.budget("poynt") == int(5 * 900 * 0.9)
    assert cfg.budget("clover") == int(50 * 900 * 0.9)
    assert cfg.staleness_bound_s == 120 * 60 + 900
    unlimited = PollConfig.from_env({"POSYNC_POYNT_APP_RPS": "0"}, 15)
    assert unlimited.budget("poynt") is None


@pytest.mark.parametrize(
    "env",
    [
        {"POSYNC_POLL_MAX_INTERVAL_MINUTES": "5"},  # below the schedule
        {"POSYNC_POLL_MAX_INTERVAL_MINUTES": "hourly"},
        {"POSYNC_POLL_BUDGET_SHARE": "1.5"},
        {"POSYNC_POLL_BUDGET_SHARE": "nan"},
        {"POSYNC_POLL_PENDING_MINUTES": "0"},
    ],
)
def test_bad_policy_settings_are_refused_at_cold_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        PollConfig.from_env(env, 15)
