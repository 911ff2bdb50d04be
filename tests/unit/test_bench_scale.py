"""The scale scenario's figures: whole at a small scale, and ``pass`` false when the budget cannot hold."""

from __future__ import annotations

from bench.scale import scenario


def test_a_small_population_within_clovers_limit_passes_with_every_figure() -> None:
    # Given 2,000 connections of the scenario's mix on Clover's 50 requests/s
    r = scenario(connections=2_000, ticks=5)
    # Then the dispatcher fits, the budget holds, nothing is left queued and staleness is bounded
    assert r["pass"] is True, r["checks"]
    assert r["connections"] == 2_000 and len(r["per_tick"]) == 5
    assert r["backlog"] == [0] * 5 and r["backlog_growth"] == 0
    assert 0 < r["max_requests_per_tick"] <= r["app_budget_requests_per_tick"] == 45_000
    assert all(t["planned_requests"] <= r["planned_budget_requests_per_tick"] for t in r["per_tick"])
    assert set(r["max_staleness_s"]) <= {"active", "cooling", "idle", "new"}
    assert max(r["max_staleness_s"].values()) <= r["staleness_bound_s"]
    assert r["aws_calls_per_idle_connection_per_tick"] > 0
    cost = r["cost"]
    assert cost["total_usd"] > 0 and cost["secret_usd"] == 0.40
    assert set(cost["per_merchant_month_usd"]) >= {"lambda", "dynamodb", "s3", "sqs", "eventbridge"}


def test_an_app_limit_too_small_for_the_population_fails_the_staleness_check() -> None:
    # Given the same population on an app allowing 0.2 requests/s (180 a tick)
    r = scenario(connections=2_000, ticks=5, app_rps=0.2)
    # Then the plan keeps to the budget (deferring), and staleness runs past its bound: pass is false
    assert all(t["requests"] <= 180 for t in r["per_tick"])
    assert sum(t["deferred"] for t in r["per_tick"]) > 0
    assert r["checks"]["budget_holds"] is True
    assert r["checks"]["staleness_within_bound"] is False
    assert r["pass"] is False
