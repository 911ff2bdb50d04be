"""Adaptive polling: which connections a schedule tick syncs, within the app's request budget.

The per-app limit is shared by every merchant of the app (Clover: 50 requests/s, so one
15-minute tick holds 45,000 requests for all of them). Polling every connection every tick
does not fit at scale, and most connections have nothing new. So each tick:

- **Interval by activity.** A connection's *activity* is the newer of its newest order's
  modified time (the cursor's ``newest``) and the start of its last webhook-triggered run
  (a webhook proves both activity and that the provider's webhooks reach us). Activity
  within ``active_s`` -> polled every tick (class ``active``); quieter connections back off
  geometrically, the interval doubling with each doubling of the quiet time (``cooling``),
  up to ``max_interval_s`` (``idle``). Never synced: ``new``, due at once.
- **Webhooks bring a connection forward at once**: the webhook handler queues its sync
  directly (``posync.webhooks``); the run it triggers makes the connection ``active``.
- **Coalescing.** A connection with a sync queued and not yet run (``queued_at`` newer than
  its last run's start, for less than ``pending_s``) or with a run in progress (the cursor
  holds a ``run``, checkpointed within ``pending_s``) gets no new message. After
  ``pending_s`` a silent one is queued again (a lost message cannot wedge a connection).
- **Budget.** The requests planned per tick and provider never exceed ``budget_share`` of
  what the app's limit allows in a tick (the rest is headroom for backfills, continuations
  and webhook syncs). A sync's cost is its last scheduled run's requests (at least one;
  Clover reads an empty window with one request). When more is due than fits, the most
  urgent go first: urgency is staleness (now minus the settled cursor) over the stated
  bound, so the connections nearest the bound are never the ones deferred.
- **Staleness bound**: ``max_interval_s + tick_s`` plus one run's duration, as long as the
  steady demand fits the budget (the dispatcher reports demand against budget and the
  deferred count, so an operator sees the day it would not).

Poynt publishes no limit: the same policy, with its configurable ``POSYNC_POYNT_APP_RPS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from posync.config import PROVIDERS, ConfigError
from posync.domain import Connection

ACTIVE, COOLING, IDLE, NEW = "active", "cooling", "idle", "new"
CLASSES = (ACTIVE, COOLING, IDLE, NEW)
DEFAULT_COST = {"clover": 2, "poynt": 1}  # requests of a poll with new orders (Clover: two reads)


class State(StrEnum):
    DUE = "due"
    NOT_DUE = "not_due"
    PENDING = "pending"  # queued, not yet run
    RUNNING = "running"  # a run in progress (its continuation is queued)


@dataclass(frozen=True)
class PollConfig:
    """The policy's knobs (``from_env``); ``app_rps`` per provider comes from ``posync.ratelimit.Limits``."""

    tick_s: int = 900
    max_interval_s: int = 3600  # POSYNC_POLL_MAX_INTERVAL_MINUTES
    active_s: int = 3600  # POSYNC_POLL_ACTIVE_MINUTES
    pending_s: int = 3600  # POSYNC_POLL_PENDING_MINUTES
    budget_share: float = 0.9  # POSYNC_POLL_BUDGET_SHARE
    app_rps: Mapping[str, float | None] = field(default_factory=lambda: {"clover": 50.0, "poynt": 50.0})

    @classmethod
    def from_env(cls, env: Mapping[str, str], schedule_minutes: int) -> PollConfig:
        from posync.ratelimit import Limits

        def minutes(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            try:
                value = int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a whole number of minutes, got {raw!r}") from exc
            if not 1 <= value <= 7 * 1440:
                raise ConfigError(f"{name} must be between 1 and 10080, got {value}")
            return value * 60

        raw_share = env.get("POSYNC_POLL_BUDGET_SHARE") or "0.9"
        try:
            share = float(raw_share)
        except ValueError as exc:
            raise ConfigError(f"POSYNC_POLL_BUDGET_SHARE must be a number, got {raw_share!r}") from exc
        if math.isnan(share) or not 0.05 <= share <= 1.0:
            raise ConfigError(f"POSYNC_POLL_BUDGET_SHARE must be between 0.05 and 1, got {raw_share!r}")
        tick = schedule_minutes * 60
        max_interval = minutes("POSYNC_POLL_MAX_INTERVAL_MINUTES", 60)
        if max_interval < tick:
            raise ConfigError("POSYNC_POLL_MAX_INTERVAL_MINUTES must be at least POSYNC_SCHEDULE_MINUTES")
        return cls(
            tick_s=tick,
            max_interval_s=max_interval,
            active_s=minutes("POSYNC_POLL_ACTIVE_MINUTES", 60),
            pending_s=minutes("POSYNC_POLL_PENDING_MINUTES", 60),
            budget_share=share,
            app_rps={p: Limits.from_env(p, env).app_rps for p in PROVIDERS},
        )

    @property
    def staleness_bound_s(self) -> int:
        """Every connection's staleness stays under this (plus one run's duration) while demand fits."""
        return self.max_interval_s + self.tick_s

    def budget(self, provider: str) -> int | None:
        """Requests one tick may plan for ``provider`` (None: no limit)."""
        rps = self.app_rps.get(provider)
        return None if not rps else int(rps * self.tick_s * self.budget_share)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the policy makes of one connection at one tick."""

    state: State
    cls: str
    interval_s: int
    staleness_s: float | None  # now minus the settled cursor (None: never synced)
    urgency: float
    cost: int


def _iso_s(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # Python >= 3.11 reads the "Z"
    except ValueError:
        return None


def _cursor_time_s(value: Any) -> float | None:
    """A cursor time: Clover's epoch ms, or Poynt's RFC 3339 text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / 1000
    return _iso_s(value)


def settled_s(conn: Connection) -> float | None:
    """The settled cursor's position (Unix seconds): everything before it has been read."""
    cursor = conn.cursor or {}
    for key in ("modified_ms", "updated_at"):
        if key in cursor:
            return _cursor_time_s(cursor[key])
    return None


def activity_s(conn: Connection) -> float | None:
    """The connection's latest sign of activity (Unix seconds), or None if it never had any."""
    newest = _cursor_time_s((conn.cursor or {}).get("newest"))
    last = conn.last_run or {}
    if last.get("kind") == "webhook":
        started = _iso_s(last.get("started_at"))
        if started is not None and (newest is None or started > newest):
            return started
    return newest


def interval_for(cfg: PollConfig, quiet_s: float | None) -> tuple[int, str]:
    """The polling interval for a connection quiet for ``quiet_s`` seconds, and its class."""
    if quiet_s is not None and quiet_s <= cfg.active_s:
        return cfg.tick_s, ACTIVE
    if quiet_s is None:
        return cfg.max_interval_s, IDLE
    doublings = math.ceil(math.log2(quiet_s / cfg.active_s))
    interval = min(cfg.max_interval_s, cfg.tick_s * 2**doublings)
    return interval, (IDLE if interval >= cfg.max_interval_s else COOLING)


def _cost(conn: Connection) -> int:
    last = conn.last_run or {}
    counts = last.get("counts") if isinstance(last.get("counts"), dict) else None
    if last.get("status") == "completed" and last.get("kind") in ("scheduled", "webhook") and counts:
        requests = counts.get("requests")
        if isinstance(requests, int) and requests >= 0:
            return max(1, min(requests, 1000))
    return DEFAULT_COST.get(conn.provider, 2)


def assess(conn: Connection, now_s: float, cfg: PollConfig) -> Assessment:
    """Due, not due, pending or running; the connection's class, staleness, urgency and cost."""
    last = conn.last_run or {}
    settled = settled_s(conn)
    staleness = None if settled is None else max(0.0, now_s - settled)
    started = _iso_s(last.get("started_at"))
    queued = _iso_s(conn.queued_at)
    pending = queued is not None and (started is None or queued > started) and now_s - queued < cfg.pending_s
    if settled is None and not last:
        state = State.PENDING if pending else State.DUE
        return Assessment(state, NEW, 0, None, math.inf, DEFAULT_COST.get(conn.provider, 2))
    act = activity_s(conn)
    interval, cls = interval_for(cfg, None if act is None else max(0.0, now_s - act))
    # An active connection is likely to have new orders: at least a poll with changes.
    cost = _cost(conn) if cls != ACTIVE else max(_cost(conn), DEFAULT_COST.get(conn.provider, 2))
    urgency = math.inf if staleness is None else staleness / cfg.staleness_bound_s
    if "run" in (conn.cursor or {}):
        touched = _iso_s(last.get("checkpoint_at")) or _iso_s(last.get("started_at")) or 0.0
        if now_s - touched < cfg.pending_s:
            return Assessment(State.RUNNING, cls, interval, staleness, urgency, cost)
        return Assessment(State.DUE, cls, interval, staleness, urgency, cost)  # silent: resume it
    if pending:
        return Assessment(State.PENDING, cls, interval, staleness, urgency, cost)
    polled = max(x for x in (started, queued, 0.0) if x is not None)
    # Half a tick of slack: a due time falling inside this tick is taken now, not a tick late.
    if now_s - polled >= interval - cfg.tick_s / 2:
        return Assessment(State.DUE, cls, interval, staleness, urgency, cost)
    return Assessment(State.NOT_DUE, cls, interval, staleness, urgency, cost)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due connection, as light as the planner needs it (100,000 of them fit in a few MB)."""

    urgency: float
    cost: int
    provider: str
    merchant_id: str
    connection_id: str


@dataclass
class Plan:
    """One tick's choice: the syncs to queue (most urgent first) and what did not fit."""

    chosen: list[Candidate]
    deferred: list[Candidate]
    planned: dict[str, int]  # requests planned per provider
    demand: dict[str, int]  # requests the due connections would need per provider
    budget: dict[str, int | None]


def plan(candidates: Iterable[Candidate], cfg: PollConfig) -> Plan:
    """The most urgent due syncs whose estimated requests fit each provider's tick budget."""
    by_provider: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_provider.setdefault(c.provider, []).append(c)
    out = Plan([], [], {}, {}, {})
    for provider, due in sorted(by_provider.items()):
        due.sort(key=lambda c: (-c.urgency, c.connection_id))
        budget = cfg.budget(provider)
        out.budget[provider] = budget
        out.demand[provider] = sum(c.cost for c in due)
        spent = 0
        for c in due:
            if budget is None or spent + c.cost <= budget:
                out.chosen.append(c)
                spent += c.cost
            else:
                out.deferred.append(c)
        out.planned[provider] = spent
    out.chosen.sort(key=lambda c: (-c.urgency, c.connection_id))
    return out
