"""Scenario 1: one merchant's backfill through fetch -> normalize -> a counting sink.

The real ``SyncService`` and ``SourceFactory`` (keyset slices, work stealing, the token
limiter at Clover's 16 requests/s and 5 in flight, the app's 50/s in process) read one
merchant from the Clover sandbox (its own process) at a given latency. No AWS: the
connection lives in memory and the sink records (order id, version) pairs.

The clock runs from the first provider request to the end of the run (the sandbox's data
generation and the OAuth flow are outside it). Figures:

- ``ratio``: orders/s read ÷ the ceiling ``token rps x orders per page`` (16 x 1000), the
  brief's figure. It assumes one request per 1,000 orders.
- ``request_ratio``: requests/s ÷ 16: how close the engine keeps to the token's limit.
- ``effective_ratio``: orders/s ÷ (16 x orders ÷ requests needed), where requests needed
  = three list reads per 1,000 orders (a complete order needs nine expansions, dotted paths
  included, and Clover expands three per call: CLV-EXPAND-5) + one per order with a nested
  list that reaches Clover's cut of 100 (those cannot come with the page). The sandbox
  seeds some orders with 101-250 line items, so a page needs between three and six requests.
- ``requests_per_1000_orders``: requests made (and needed) per 1,000 orders read.
- ``cpu_ceiling_orders_per_s``: orders ÷ the process's CPU seconds, the rate its CPU allows
  (parsing and normalizing hold the GIL: one core's worth). ``bound`` names the lower of
  that and the effective ceiling; ``cpu_busy`` is CPU seconds ÷ wall seconds.
- ``cpu_vs_json_loads``: the run's CPU per order ÷ what ``json.loads`` alone spends on the
  same replies' bytes (every reply parsed again on the fetch thread's CPU clock, then
  taken out of the run's CPU: ``cpu_s.bench`` and ``cpu_us_per_order`` exclude it).
  The issue's target is at most 1.0.
- ``reachable_ratio``: the lower of the two ceilings ÷ the brief's: the greatest ``ratio``
  this run's requests and CPU allow (about 0.29: the brief's 0.9 and 0.8 cannot be met by
  any engine that reads complete orders). ``effective_pass``: ``effective_ratio`` against
  the case's target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    GcTimer,
    MemoryConnections,
    NullMetrics,
    Recorder,
    StaticTokens,
    TimedHttp,
    check,
    clover_limits,
    cpu_s,
    load,
    sandbox_settings,
)
from bench.sandboxproc import LIST_READS_PER_PAGE, SandboxProcess
from posync.domain import Connection
from posync.ratelimit import Deadline, Limits, LocalAppRate
from posync.sources import KeysetSource
from posync.sync import SourceFactory, SyncConfig, SyncService
from posync.syncqueue import SyncKind, SyncRequest

PAGE_LIMIT = 1000  # Clover's maximum: what the engine uses by default


@dataclass(frozen=True)
class PipelineCase:
    latency_ms: int
    target: float  # minimum ratio of the ceiling


CASES = (PipelineCase(50, 0.9), PipelineCase(200, 0.8))


def _timed_sources(
    factory: SourceFactory, timers: list[TimedHttp]
) -> Callable[[Connection, Deadline], KeysetSource]:
    def sources(conn: Connection, deadline: Deadline) -> KeysetSource:
        source = factory(conn, deadline)
        timed = TimedHttp(source.transport.http, json_reference=True)
        source.transport.http = timed
        timers.append(timed)
        return source

    return sources


def run_case(
    sb: SandboxProcess,
    merchant: str,
    token: str,
    truth: dict[str, int],
    nested: set[str],
    case: PipelineCase,
) -> dict[str, Any]:
    limits = clover_limits()
    clover: Limits = limits["clover"]
    token_rps = float(clover.token_rps or 0)
    config = SyncConfig(limits=limits, app_limit="local")
    factory = SourceFactory(
        sandbox_settings(sb.url),
        StaticTokens({merchant: token}),
        config,
        app_rates={"clover": LocalAppRate(clover.app_rps)},
    )
    timers: list[TimedHttp] = []
    recorder = Recorder()
    enqueued: list[SyncRequest] = []
    conn = Connection(provider="clover", merchant_id=merchant)
    service = SyncService(
        connections=MemoryConnections([conn]),
        sources=_timed_sources(factory, timers),
        sinks=recorder.sink,
        enqueue=lambda req, dedup: enqueued.append(req),
        config=config,
        metrics=NullMetrics(),
    )
    sb.set_knobs(latency_ms=case.latency_ms)
    sb.reset_stats()
    load_before = load()
    cpu0, sb_cpu0 = cpu_s(), sb.cpu_s()
    with GcTimer() as gc_time:
        result = service.run(
            SyncRequest("clover", merchant, SyncKind.BACKFILL, reason="bench"), Deadline.after(900)
        )
        t_end = time.monotonic()
    cpu1, sb_cpu1 = cpu_s(), sb.cpu_s()
    seen = recorder.seen.get(conn.connection_id, [])
    verdict = check(truth, seen)
    server = sb.requests_by_kind()
    first = min((t.first_start for t in timers if t.first_start is not None), default=t_end)
    elapsed = max(1e-9, t_end - first)
    orders = len(seen)
    requests = server["total"]
    list_needed = LIST_READS_PER_PAGE * math.ceil(len(truth) / PAGE_LIMIT)
    needed = list_needed + len(nested)
    rate = orders / elapsed
    ceiling = token_rps * PAGE_LIMIT
    effective_ceiling = token_rps * len(truth) / max(1, needed)
    ratio = rate / ceiling
    # The yardstick: json.loads on every reply's bytes, timed apart and taken out of the run's CPU.
    reference = sum(t.json_loads_s for t in timers)
    cpu = max(1e-9, cpu1 - cpu0 - reference)
    # One interpreter: parsing and normalizing hold the GIL, so the process's CPU time per
    # order bounds its rate whatever the provider allows.
    cpu_ceiling = orders / cpu
    return {
        "latency_ms": case.latency_ms,
        "status": result.status,
        "continuations": len(enqueued),
        "orders": orders,
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(rate, 1),
        "ceiling_orders_per_s": ceiling,
        "ratio": round(ratio, 3),
        "target": case.target,
        "pass": ratio >= case.target,
        "requests": {k: server[k] for k in ("list", "by_id", "nested", "total")},
        "requests_needed": {
            "list": list_needed,
            "nested": len(nested),
            "total": needed,
        },
        "requests_per_1000_orders": {
            "made": round(requests * 1000 / max(1, orders), 2),
            "needed": round(needed * 1000 / max(1, len(truth)), 2),
        },
        "requests_per_s": round(requests / elapsed, 2),
        "request_ratio": round(requests / elapsed / token_rps, 3),
        "effective_ceiling_orders_per_s": round(effective_ceiling, 1),
        "effective_ratio": round(rate / effective_ceiling, 3),
        "effective_pass": rate / effective_ceiling >= case.target,
        # The best ``ratio`` any engine could show here: every request at the token's limit
        # (the requests a complete read needs), or this process's CPU, whichever is lower.
        "reachable_ratio": round(min(effective_ceiling, cpu_ceiling) / ceiling, 3),
        "rate_limited_429": server["rate_limited"],
        "server_errors": server["server_errors"],
        "quarantined": recorder.quarantined,
        "cpu_s": {"bench": round(cpu, 2), "sandbox": round(sb_cpu1 - sb_cpu0, 2)},
        "cpu_us_per_order": round(cpu / max(1, orders) * 1e6, 1),
        "json_loads_us_per_order": round(reference / max(1, orders) * 1e6, 1),
        "reply_bytes_per_order": round(sum(t.json_bytes for t in timers) / max(1, orders)),
        "cpu_vs_json_loads": round(cpu / max(1e-9, reference), 3),
        "cpu_busy": round(cpu / elapsed, 3),  # of one core
        "cpu_ceiling_orders_per_s": round(cpu_ceiling, 1),
        "bound": "cpu" if cpu_ceiling < effective_ceiling else "rate limit",
        "gc": gc_time.as_dict(),
        "check": verdict.as_dict(),
        "check_ok": verdict.ok,
        "load_before": load_before,
        "load_after": load(),
    }


def scenario(sb: SandboxProcess, *, orders: int, days: int = 60) -> dict[str, Any]:
    """Both latencies against one merchant of ``orders`` orders over ``days`` days."""
    t0 = time.monotonic()
    merchant = sb.add_merchant(orders=orders, days=days)
    token = sb.tokens([merchant])[merchant]
    truth = sb.truth(merchant)
    nested = sb.nested_needed(merchant)
    setup_s = time.monotonic() - t0
    cases = [run_case(sb, merchant, token, truth, nested, case) for case in CASES]
    sb.set_knobs(latency_ms=0)
    return {
        "merchant_orders": orders,
        "setup_s": round(setup_s, 2),
        "cases": cases,
        "merchant": merchant,
        "pass": all(c["pass"] for c in cases),
        "check_ok": all(c["check_ok"] for c in cases),
    }
